// A fetch-based Server-Sent Events reader: EventSource cannot send the Authorization header.
// It reconnects after a dropped connection with Last-Event-ID = the last id it delivered,
// and the server resumes exactly after it, so nothing is missed or repeated.
import { authHeaders, errorOf } from "./api.js";

export function follow(path, { lastEventId = null, onMessage, onError, onStatus }) {
  const controller = new AbortController();
  let cursor = lastEventId;
  let stopped = false;

  async function connectOnce() {
    const headers = authHeaders({ Accept: "text/event-stream" });
    if (cursor) headers["Last-Event-ID"] = cursor;
    const response = await fetch(path, { headers, signal: controller.signal });
    if (!response.ok) throw Object.assign(await errorOf(response), { fatal: response.status < 500 });
    onStatus?.("live");
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return false;
      buffer += value; // sse-starlette ends lines with \r\n: normalise (a trailing \r may pair with the next chunk)
      const tail = buffer.endsWith("\r") ? "\r" : "";
      buffer = buffer.slice(0, buffer.length - tail.length).replace(/\r\n?/g, "\n") + tail;
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const message = parse(buffer.slice(0, cut));
        buffer = buffer.slice(cut + 2);
        if (!message) continue;
        if (message.id) cursor = message.id;
        onMessage(message);
        if (message.event === "end") return true;
      }
    }
  }

  (async () => {
    let failures = 0;
    while (!stopped) {
      try {
        if (await connectOnce()) return onStatus?.("ended");
        failures = 0;
      } catch (error) {
        if (stopped || error.name === "AbortError") return;
        if (error.fatal) return onError?.(error);
        failures += 1;
      }
      onStatus?.("reconnecting");
      await new Promise((r) => setTimeout(r, Math.min(500 * 2 ** failures, 10000)));
    }
  })();

  return { stop() { stopped = true; controller.abort(); }, cursor: () => cursor };
}

function parse(block) {
  let event = "message", id = null;
  const data = [];
  for (const line of block.split(/\r?\n/)) {
    if (!line || line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") event = value;
    else if (field === "data") data.push(value);
    else if (field === "id") id = value;
  }
  if (!data.length) return null;
  return { event, id, data: JSON.parse(data.join("\n")) };
}
