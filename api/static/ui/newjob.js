// New job: a JSON or YAML spec editor; the server's validation errors are listed next to the
// editor, each naming its field and the line where that field is; plus JSONL upload.
import { call, post } from "./api.js";
import { errorBox, h } from "./dom.js";
import { load as parseYaml } from "./vendor/js-yaml.mjs";

const EXAMPLE = `method: amft
model: builtin:tiny
datasets:
  sft: {source: builtin:arithmetic}
  rl: {source: builtin:arithmetic}
training:
  total_steps: 40
  warmup_steps: 5
  save_every: 20
  rl_prompts_per_step: 2
  num_generations: 4
  max_completion_tokens: 24
controller:
  meta_interval: 5
`;

export function newJobView() {
  const editor = h("textarea", { id: "spec-editor", spellcheck: "false", "aria-describedby": "spec-help spec-errors" }, EXAMPLE);
  const errors = h("div", { id: "spec-errors", "aria-live": "assertive" });
  const submit = h("button", { type: "submit" }, "Submit job");
  const form = h("form", { class: "card", "aria-labelledby": "new-title", onsubmit: async (event) => {
    event.preventDefault();
    errors.replaceChildren();
    let spec;
    try { spec = parseYaml(editor.value) ?? {}; } catch (error) {
      errors.replaceChildren(errorBox({ message: `The spec is not valid JSON or YAML: ${error.message}` }));
      return editor.focus();
    }
    submit.disabled = true;
    try {
      const job = await post("/jobs", spec, { headers: { "Idempotency-Key": crypto.randomUUID() } });
      location.hash = `#/job/${job.id}`;
    } catch (error) {
      errors.replaceChildren(fieldErrors(error, editor.value));
      errors.querySelector("a")?.focus();
    }
    submit.disabled = false;
  } },
  h("h1", { id: "new-title" }, "New job"),
  h("div", { class: "row", style: "align-items:flex-start" },
    h("div", { style: "flex: 2 1 24rem" }, h("label", { for: "spec-editor" }, "Job spec (YAML or JSON)"), editor,
      h("p", { id: "spec-help", class: "muted" }, "Fields are described at /docs (JobSpec). Unknown fields are rejected.")),
    h("div", { style: "flex: 1 1 14rem" }, h("h2", {}, "Problems"), errors)),
  submit);
  return { node: h("div", {}, form, uploadCard(editor)), title: "New job", stop: () => {} };
}

// Each problem "a.b.c: message" names its field; find the line of that field in the text.
function fieldErrors(error, text) {
  const list = h("ul", { class: "field-errors", role: "alert" });
  for (const problem of error.problems) {
    const [field, ...rest] = problem.split(": ");
    const message = rest.length ? rest.join(": ") : problem;
    const line = rest.length ? lineOf(text, field) : null;
    list.append(h("li", { "data-field": rest.length ? field : "" },
      rest.length ? h("code", {}, field) : "", rest.length ? ": " : "", message,
      line ? h("a", { href: "#", onclick: (e) => { e.preventDefault(); selectLine(text, line); } }, ` (line ${line})`) : ""));
  }
  return h("div", {}, h("p", { class: "error" }, `The server refused the spec (${error.status}).`), list);
}

function lineOf(text, field) {
  const lines = text.split("\n");
  let from = 0, found = null;
  for (const part of field.split(".").filter((p) => !/^\d+$/.test(p))) {
    const pattern = new RegExp(`(^|[\\s{,"'])${part.replace(/[^\w-]/g, "")}["']?\\s*:`);
    const index = lines.findIndex((l, i) => i >= from && pattern.test(l));
    if (index < 0) break;
    found = index + 1; from = index;
  }
  return found;
}

function selectLine(text, line) {
  const editor = document.getElementById("spec-editor");
  const lines = text.split("\n");
  const start = lines.slice(0, line - 1).join("\n").length + (line > 1 ? 1 : 0);
  editor.focus();
  editor.setSelectionRange(start, start + lines[line - 1].length);
}

function uploadCard(editor) {
  const file = h("input", { id: "upload-file", type: "file", accept: ".jsonl,.json,application/jsonl" });
  const out = h("div", { id: "upload-result", "aria-live": "polite" });
  return h("form", { class: "card", "aria-labelledby": "upload-title", onsubmit: async (event) => {
    event.preventDefault();
    const chosen = file.files[0];
    if (!chosen) return out.replaceChildren(errorBox({ message: "Choose a .jsonl file first." }));
    try {
      const answer = await call("POST", `/files?filename=${encodeURIComponent(chosen.name)}`,
        { body: chosen, headers: { "Content-Type": "application/jsonl" } });
      out.replaceChildren(h("p", {}, "Uploaded: ", h("code", {}, answer.source), " ",
        h("button", { type: "button", class: "secondary", onclick: () => {
          editor.value = editor.value.replace(/source: builtin:arithmetic/g, `source: "${answer.source}"`);
        } }, "Use in the spec")));
    } catch (error) {
      out.replaceChildren(h("ul", { class: "field-errors", role: "alert" }, error.problems.map((p) => h("li", {}, p))));
    }
  } },
  h("h2", { id: "upload-title" }, "Upload a dataset (JSONL)"),
  h("label", { for: "upload-file" }, "File"), file, h("p", {}, h("button", { type: "submit" }, "Upload")), out);
}
