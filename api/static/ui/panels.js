// Job page panels: checkpoints, the "try it" box (POST /generate) and evaluations with
// per-item outputs.
import { get, post } from "./api.js";
import { errorBox, h, num, statusCell } from "./dom.js";

export function checkpointsPanel(id) {
  const list = h("ul", { id: "checkpoints" }, h("li", { class: "muted" }, "Loading…"));
  get(`/jobs/${id}/checkpoints`).then(({ checkpoints }) => {
    list.replaceChildren(...(checkpoints.length ? checkpoints.map((c) =>
      h("li", {}, h("code", {}, `${id}:${c.step}`), ` step ${c.step}, ${new Date(c.created_at).toLocaleString()}`))
      : [h("li", { class: "muted" }, "No checkpoint yet.")]));
    for (const select of document.querySelectorAll(`select[data-checkpoints="${id}"]`)) {
      select.replaceChildren(h("option", { value: id }, "latest"),
        ...checkpoints.map((c) => h("option", { value: `${id}:${c.step}` }, `step ${c.step}`)));
    }
  }).catch((error) => list.replaceChildren(errorBox(error)));
  return h("section", { class: "card", "aria-labelledby": "cp-title" }, h("h2", { id: "cp-title" }, "Checkpoints"), list);
}

export function tryItPanel(id) {
  const model = h("select", { id: "try-model", "data-checkpoints": id }, h("option", { value: id }, "latest"));
  const prompt = h("textarea", { id: "try-prompt", rows: 3, style: "min-height:4rem" },
    "Tom has 3 apples. He buys 4 more. How many apples does Tom have now?");
  const tokens = h("input", { id: "try-tokens", type: "number", min: 1, max: 512, value: 48 });
  const out = h("pre", { id: "try-output", "aria-live": "polite" });
  const button = h("button", { type: "submit" }, "Generate");
  const form = h("form", { class: "card", "aria-labelledby": "try-title", onsubmit: async (event) => {
    event.preventDefault();
    button.disabled = true;
    out.textContent = "Generating…";
    try {
      const answer = await post("/generate", { model: model.value, prompts: [prompt.value], max_tokens: Number(tokens.value), temperature: 0 });
      const c = answer.results[0].completions[0];
      out.textContent = `${c.text}\n\n(${answer.model}, ${c.tokens} tokens, ${c.finish_reason})`;
    } catch (error) { out.replaceChildren(errorBox(error)); }
    button.disabled = false;
  } },
  h("h2", { id: "try-title" }, "Try it"),
  h("div", { class: "row" }, h("div", {}, h("label", { for: "try-model" }, "Checkpoint"), model),
    h("div", {}, h("label", { for: "try-tokens" }, "Max tokens"), tokens)),
  h("label", { for: "try-prompt" }, "Prompt"), prompt, h("p", {}, button), out);
  return form;
}

export function evaluationsPanel(id) {
  const list = h("div", { id: "evaluations" });
  const split = h("select", { id: "eval-split" }, ["id", "ood", "validation"].map((s) => h("option", { value: s }, `arithmetic ${s}`)));
  const limit = h("input", { id: "eval-limit", type: "number", min: 1, max: 1000, value: 20 });
  async function load() {
    try {
      const { evaluations } = await get(`/jobs/${id}/evaluations`);
      list.replaceChildren(...evaluations.map((e) => h("details", { "data-evaluation": e.id, ontoggle: (ev) => items(ev.target, e) },
        h("summary", {}, statusCell(e.status), ` step ${e.step} · ${e.dataset.source} ${e.dataset.split || ""} · accuracy ${num(e.accuracy)} (${e.correct ?? "–"}/${e.total ?? "–"})`))));
      if (evaluations.some((e) => !["succeeded", "failed"].includes(e.status))) setTimeout(load, 2000);
    } catch (error) { list.replaceChildren(errorBox(error)); }
  }
  async function items(details, evaluation) {
    if (!details.open || details.dataset.loaded) return;
    details.dataset.loaded = "1";
    const full = await get(`/jobs/${id}/evaluations/${evaluation.id}`);
    details.append(h("table", {}, h("thead", {}, h("tr", {}, ["Prompt", "Answer", "Output", "✓"].map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, (full.items || []).map((item) => h("tr", {},
        h("td", {}, item.prompt), h("td", {}, item.answer), h("td", {}, h("pre", {}, item.output)), h("td", {}, item.correct ? "yes" : "no"))))));
  }
  const form = h("form", { class: "row", onsubmit: async (event) => {
    event.preventDefault();
    try {
      await post(`/jobs/${id}/evaluations`, { dataset: { source: "builtin:arithmetic", split: split.value }, limit: Number(limit.value) });
      load();
    } catch (error) { list.prepend(errorBox(error)); }
  } },
  h("div", {}, h("label", { for: "eval-split" }, "Dataset"), split),
  h("div", {}, h("label", { for: "eval-limit" }, "Items"), limit),
  h("div", {}, h("button", { type: "submit" }, "Evaluate latest checkpoint")));
  load();
  return h("section", { class: "card", "aria-labelledby": "eval-title" }, h("h2", { id: "eval-title" }, "Evaluations"), form, list);
}
