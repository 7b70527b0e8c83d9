package azure

import (
	"testing"

	"github.com/tollgate-gw/tollgate/dataplane/internal/enforce"
	"github.com/tollgate-gw/tollgate/dataplane/internal/provider"
	"github.com/tollgate-gw/tollgate/dataplane/internal/state"
)

func TestAzureURLs(t *testing.T) {
	tg, err := New(&state.Model{UpstreamModel: "azure/prod gpt", APIBase: "https://r.openai.azure.com/openai/", APIVersion: "2024-10-21"})
	if err != nil {
		t.Fatal(err)
	}
	for route, want := range map[enforce.Route]string{
		enforce.RouteChat:           "https://r.openai.azure.com/openai/deployments/prod%20gpt/chat/completions?api-version=2024-10-21",
		enforce.RouteEmbeddings:     "https://r.openai.azure.com/openai/deployments/prod%20gpt/embeddings?api-version=2024-10-21",
		enforce.RouteImages:         "https://r.openai.azure.com/openai/deployments/prod%20gpt/images/generations?api-version=2024-10-21",
		enforce.RouteTranscriptions: "https://r.openai.azure.com/openai/deployments/prod%20gpt/audio/transcriptions?api-version=2024-10-21",
		enforce.RouteResponses:      "https://r.openai.azure.com/openai/responses?api-version=2024-10-21",
	} {
		p := provider.Plan{Route: route}
		if rej := tg.Plan(&p); rej != nil {
			t.Fatalf("%s: %s", route.Path(), rej.Message)
		}
		if p.URL.String() != want || p.AuthHeader != "Api-Key" {
			t.Errorf("%s: %s %s", route.Path(), p.URL, p.AuthHeader)
		}
	}
	p := provider.Plan{Route: enforce.RouteResponseItem, Suffix: "/resp_1"}
	if tg.Plan(&p); p.URL.String() != "https://r.openai.azure.com/openai/responses/resp_1?api-version=2024-10-21" {
		t.Errorf("item: %s", p.URL)
	}
	for _, r := range []enforce.Route{enforce.RouteMessages, enforce.RouteModerations, enforce.RouteRerank} {
		if tg.Plan(&provider.Plan{Route: r}) != provider.ErrUnsupported {
			t.Errorf("%s served", r.Path())
		}
	}
	if _, err := New(&state.Model{UpstreamModel: "azure/x"}); err == nil {
		t.Error("no api_base accepted")
	}
}
