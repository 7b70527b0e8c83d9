// Drives a Tollgate proxy with the official OpenAI Node SDK. Inputs come
// from the environment (set by deploy/e2e/sdk_test.go); it exits non-zero
// with a message on the first unexpected answer.
import OpenAI from "openai";

const baseURL = process.env.PROXY_URL + "/v1";
const fail = (msg) => { console.error("FAIL: " + msg); process.exit(1); };
const expectError = async (what, fn, status, check = () => {}) => {
  try {
    await fn();
  } catch (e) {
    if (!(e instanceof OpenAI.APIError)) fail(`${what}: not an APIError: ${e}`);
    if (e.status !== status) fail(`${what}: status ${e.status}, want ${status}: ${e.message}`);
    check(e);
    return;
  }
  fail(`${what}: no error`);
};

const client = new OpenAI({ apiKey: process.env.KEY, baseURL, maxRetries: 0 });

// Non-streaming chat.
const r = await client.chat.completions.create({ model: "gpt-4o-mini", messages: [{ role: "user", content: "hi" }] });
if (r.choices[0].message.content !== "Hello from upstream") fail("chat content " + JSON.stringify(r));
if (r.usage.total_tokens !== 15) fail("usage " + JSON.stringify(r.usage));

// Streaming chat: chunks arrive in order; no usage chunk unless asked.
let text = "", usageSeen = false;
for await (const chunk of await client.chat.completions.create({ model: "gpt-4o-mini", stream: true, messages: [{ role: "user", content: "hi" }] })) {
  if (chunk.usage) usageSeen = true;
  text += chunk.choices[0]?.delta?.content ?? "";
}
if (text !== "Hello from upstream") fail("streamed text " + JSON.stringify(text));
if (usageSeen) fail("usage chunk passed to a client that did not ask for it");

// Streaming with include_usage: the usage chunk arrives.
let usage = null;
for await (const chunk of await client.chat.completions.create({ model: "gpt-4o-mini", stream: true, stream_options: { include_usage: true }, messages: [{ role: "user", content: "hi" }] })) {
  if (chunk.usage) usage = chunk.usage;
}
if (!usage || usage.total_tokens !== 15) fail("usage chunk missing: " + JSON.stringify(usage));

// Embeddings.
const emb = await client.embeddings.create({ model: "text-embedding-3-small", input: "hello" });
if (emb.data.length !== 1) fail("embeddings " + JSON.stringify(emb));

// Models: only what the key may use.
const models = [];
for await (const m of client.models.list()) models.push(m.id);
if (models.join(",") !== process.env.WANT_MODELS) fail(`models ${models} want ${process.env.WANT_MODELS}`);

// Errors come back as the SDK's typed errors.
await expectError("unknown key", () => new OpenAI({ apiKey: "sk-unknown-key-0000000000000000", baseURL, maxRetries: 0 })
  .chat.completions.create({ model: "gpt-4o-mini", messages: [{ role: "user", content: "hi" }] }), 401,
  (e) => { if (!(e instanceof OpenAI.AuthenticationError)) fail("401 is not AuthenticationError"); });

const sa = new OpenAI({ apiKey: process.env.SA_KEY, baseURL, maxRetries: 0 });
await expectError("service account without user", () => sa.chat.completions.create({ model: "gpt-4o-mini", messages: [{ role: "user", content: "hi" }] }), 400,
  (e) => {
    if (!(e instanceof OpenAI.BadRequestError)) fail("400 is not BadRequestError");
    if (e.param !== "user" || e.type !== "bad_request_error") fail("400 param/type " + JSON.stringify(e.error));
  });
const ok = await sa.chat.completions.create({ model: "gpt-4o-mini", user: "alice", messages: [{ role: "user", content: "hi" }] });
if (!ok.choices.length) fail("service account with user");

console.log("ok");
