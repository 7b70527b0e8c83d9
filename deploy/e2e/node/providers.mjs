// Drives a Tollgate proxy's provider routes with the official SDKs: the
// OpenAI SDK on /v1/responses and an Azure deployment, Anthropic's SDK on
// /v1/messages (create, stream, countTokens). Inputs come from the
// environment (set by deploy/e2e/providers_test.go); it exits non-zero with
// a message on the first unexpected answer.
import OpenAI, { toFile } from "openai";
import Anthropic from "@anthropic-ai/sdk";

const proxy = process.env.PROXY_URL;
const fail = (msg) => { console.error("FAIL: " + msg); process.exit(1); };
const expectError = async (what, fn, cls, status) => {
  try {
    await fn();
  } catch (e) {
    if (!(e instanceof cls)) fail(`${what}: ${e?.constructor?.name} is not ${cls.name}: ${e}`);
    if (e.status !== status) fail(`${what}: status ${e.status}, want ${status}`);
    return e;
  }
  fail(`${what}: no error`);
};

// OpenAI Responses API, whole and streamed, then retrieval by id.
const oa = new OpenAI({ apiKey: process.env.KEY_RESP, baseURL: proxy + "/v1", maxRetries: 0 });
const r = await oa.responses.create({ model: "gpt-4o-mini", input: "hi" });
if (r.output_text !== "Hi there") fail("responses output_text " + JSON.stringify(r));
if (r.usage.input_tokens !== 10 || r.usage.output_tokens !== 4) fail("responses usage " + JSON.stringify(r.usage));
let streamed = "", completed = null;
for await (const ev of await oa.responses.create({ model: "gpt-4o-mini", input: "hi", stream: true })) {
  if (ev.type === "response.output_text.delta") streamed += ev.delta;
  if (ev.type === "response.completed") completed = ev.response;
}
if (streamed !== "Hi there" || !completed || completed.usage.total_tokens !== 18) fail("responses stream " + streamed + " " + JSON.stringify(completed));
const got = await oa.responses.retrieve(r.id);
if (got.id !== r.id) fail("responses.retrieve " + JSON.stringify(got));
await expectError("retrieve with another key", () => new OpenAI({ apiKey: process.env.KEY_MSG, baseURL: proxy + "/v1", maxRetries: 0 }).responses.retrieve(r.id), OpenAI.NotFoundError, 404);

// Azure deployment through the OpenAI SDK (the proxy speaks OpenAI).
const az = new OpenAI({ apiKey: process.env.KEY_AZ, baseURL: proxy + "/v1", maxRetries: 0 });
const c = await az.chat.completions.create({ model: "azure-gpt", messages: [{ role: "user", content: "hi" }] });
if (c.choices[0].message.content !== "Hello from Azure" || c.usage.total_tokens !== 9) fail("azure chat " + JSON.stringify(c));

// The OpenAI SDK calling a Claude model by its public name (translated).
const oc = new OpenAI({ apiKey: process.env.KEY_CHAT_CLAUDE, baseURL: proxy + "/v1", maxRetries: 0 });
const cc = await oc.chat.completions.create({ model: "claude-sonnet", max_tokens: 64, messages: [{ role: "system", content: "be brief" }, { role: "user", content: "hi" }] });
if (cc.choices[0].message.content !== "Hello from Claude" || cc.choices[0].finish_reason !== "stop" || cc.usage.prompt_tokens !== 3100 || cc.usage.completion_tokens !== 50) fail("chat to claude " + JSON.stringify(cc));
let ctext = "", cusage = null, cfinish = null;
for await (const chunk of await oc.chat.completions.create({ model: "claude-sonnet", stream: true, stream_options: { include_usage: true }, messages: [{ role: "user", content: "hi" }] })) {
  if (chunk.usage) cusage = chunk.usage;
  ctext += chunk.choices[0]?.delta?.content ?? "";
  cfinish = chunk.choices[0]?.finish_reason ?? cfinish;
}
if (ctext !== "Hello streamed" || cfinish !== "stop" || !cusage || cusage.completion_tokens !== 15 || cusage.prompt_tokens !== 35) fail("streamed chat to claude " + ctext + " " + JSON.stringify(cusage));

// Anthropic Messages API: the key in x-api-key.
const an = new Anthropic({ apiKey: process.env.KEY_MSG, baseURL: proxy, maxRetries: 0 });
const m = await an.messages.create({ model: "claude-sonnet", max_tokens: 64, messages: [{ role: "user", content: "hi" }] });
if (m.content[0].text !== "Hello from Claude") fail("messages.create " + JSON.stringify(m));
if (m.usage.cache_read_input_tokens !== 2000 || m.usage.output_tokens !== 50) fail("messages usage " + JSON.stringify(m.usage));
const s = an.messages.stream({ model: "claude-sonnet", max_tokens: 64, messages: [{ role: "user", content: "hi" }] });
let text = "";
s.on("text", (t) => { text += t; });
const fm = await s.finalMessage();
if (text !== "Hello streamed" || fm.usage.output_tokens !== 15 || fm.usage.input_tokens !== 25) fail("messages.stream " + text + " " + JSON.stringify(fm.usage));
const ct = await an.messages.countTokens({ model: "claude-sonnet", messages: [{ role: "user", content: "hi" }] });
if (ct.input_tokens !== 42) fail("countTokens " + JSON.stringify(ct));

// Anthropic's exceptions from Anthropic's error shape.
await expectError("unknown key", () => new Anthropic({ apiKey: "sk-unknown-key-0000000000000000", baseURL: proxy, maxRetries: 0 })
  .messages.create({ model: "claude-sonnet", max_tokens: 8, messages: [{ role: "user", content: "hi" }] }), Anthropic.AuthenticationError, 401);
await expectError("model not allowed", () => new Anthropic({ apiKey: process.env.KEY_RESP, baseURL: proxy, maxRetries: 0 })
  .messages.create({ model: "claude-sonnet", max_tokens: 8, messages: [{ role: "user", content: "hi" }] }), Anthropic.AuthenticationError, 401);
await expectError("route not allowed", () => new Anthropic({ apiKey: process.env.KEY_CHAT_ONLY, baseURL: proxy, maxRetries: 0 })
  .messages.create({ model: "claude-sonnet", max_tokens: 8, messages: [{ role: "user", content: "hi" }] }), Anthropic.AuthenticationError, 401);
await expectError("responses route not allowed", () => new OpenAI({ apiKey: process.env.KEY_CHAT_ONLY, baseURL: proxy + "/v1", maxRetries: 0 })
  .responses.create({ model: "gpt-4o-mini", input: "hi" }), OpenAI.AuthenticationError, 401);
// Bearer auth (authToken) works too.
const bearer = new Anthropic({ authToken: process.env.KEY_MSG, apiKey: null, baseURL: proxy, maxRetries: 0 });
const ct2 = await bearer.messages.countTokens({ model: "claude-sonnet", messages: [{ role: "user", content: "hi" }] });
if (ct2.input_tokens !== 42) fail("countTokens with a bearer token");

// Images, audio and moderations through the OpenAI SDK (transcriptions as
// the SDK's multipart upload).
const ou = new OpenAI({ apiKey: process.env.KEY_UNITS, baseURL: proxy + "/v1", maxRetries: 0 });
const img = await ou.images.generate({ model: "dalle", prompt: "a cat", n: 2 });
if (img.data.length !== 2) fail("images " + JSON.stringify(img));
const tr = await ou.audio.transcriptions.create({ model: "whisper", file: await toFile(Buffer.from("fake audio bytes"), "a.mp3") });
if (tr.text !== "hello world") fail("transcription " + JSON.stringify(tr));
const sp = await ou.audio.speech.create({ model: "tts", voice: "alloy", input: "hello world" });
if ((await sp.text()) !== "ID3-fake-mp3-bytes") fail("speech");
const mod = await ou.moderations.create({ model: "moderation", input: "hi" });
if (mod.results[0].flagged !== false) fail("moderation " + JSON.stringify(mod));

console.log("ok");
