// The onnxprune upload page: submit a job to /v1/jobs, poll the job list, link the results.
// Plain DOM code, no framework, nothing fetched from other origins. Values from the server are
// only ever set as textContent, never parsed as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const ACTIVE = new Set(["queued", "running"]);
let pollTimer = null;
const finished = new Map();  // job id -> the job with its report; a succeeded job no longer changes

// Without a server token, a random key of this browser's own scopes the job list to its own jobs.
function clientKey() {
  let key = localStorage.getItem("onnxprune-client-key");
  if (!key) {
    const bytes = crypto.getRandomValues(new Uint8Array(24));
    key = Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
    localStorage.setItem("onnxprune-client-key", key);
  }
  return key;
}

function headers() {
  const token = $("token").value.trim() || clientKey();
  return { Authorization: `Bearer ${token}` };
}

async function errorText(response) {
  try {
    const body = await response.json();
    if (body && body.error) return `${body.error.code}: ${body.error.message}`;
  } catch (_) { /* not JSON */ }
  return `HTTP ${response.status}`;
}

// The form's options come from GET /v1/options, itself derived from the server's options schema
// (workers.options.PruneOptions): every option, grouped, the data-driven ones shown once a data
// file is chosen. Only values that differ from the schema's defaults are sent.
let optionSpecs = [];

function optionInput(spec) {
  let input;
  if (spec.kind === "boolean") {
    input = document.createElement("input");
    input.type = "checkbox";
    input.checked = Boolean(spec.default);
  } else if (spec.kind === "choice") {
    input = document.createElement("select");
    for (const choice of spec.choices) {
      const option = new Option(spec.data_choices.includes(choice) ? `${choice} (needs data)` : choice, choice);
      option.dataset.needsData = spec.data_choices.includes(choice) ? "1" : "";
      input.add(option);
    }
    input.value = String(spec.default);
  } else if (spec.kind === "integer" || spec.kind === "number") {
    input = document.createElement("input");
    input.type = "number";
    input.step = spec.kind === "integer" ? "1" : "any";
    if (spec.default !== null) input.value = String(spec.default);
  } else {
    input = document.createElement("input");
    input.type = "text";
    input.placeholder = { "number-or-word": `a number or ${spec.choices.join(", ")}`, list: "comma-separated",
                          shapes: "input:1x3x224x224, other:1x10" }[spec.kind] || "";
  }
  input.id = `opt-${spec.name}`;
  input.name = spec.name;
  return input;
}

function buildOptions(specs) {
  optionSpecs = specs;
  const holder = $("options");
  holder.replaceChildren();
  const groups = new Map();
  for (const spec of specs) {
    if (!groups.has(spec.group)) {
      const fieldset = document.createElement("fieldset");
      fieldset.dataset.group = spec.group;
      const legend = document.createElement("legend");
      legend.textContent = spec.group_title;
      fieldset.appendChild(legend);
      holder.appendChild(fieldset);
      groups.set(spec.group, fieldset);
    }
    const label = document.createElement("label");
    label.dataset.option = spec.name;
    label.dataset.needsData = spec.needs_data ? "1" : "";
    label.title = spec.description;
    const input = optionInput(spec);
    if (spec.kind === "boolean") {
      label.append(input, ` ${spec.name.replaceAll("_", " ")}`);
    } else {
      label.append(`${spec.name.replaceAll("_", " ")} `, input);
    }
    const help = document.createElement("span");
    help.className = "hint";
    help.textContent = ` ${spec.description}`;
    label.appendChild(help);
    groups.get(spec.group).appendChild(label);
  }
  showDataOptions();
}

function showDataOptions() {
  const hasData = Boolean($("data").files[0]);
  for (const label of document.querySelectorAll("#options label[data-option]")) {
    label.hidden = label.dataset.needsData === "1" && !hasData;
  }
  for (const option of document.querySelectorAll("#options option")) {
    option.disabled = option.dataset.needsData === "1" && !hasData;
  }
  for (const fieldset of document.querySelectorAll("#options fieldset")) {
    fieldset.hidden = [...fieldset.querySelectorAll("label[data-option]")].every((label) => label.hidden);
  }
  $("data-hint").hidden = hasData;
}

function optionValue(spec, input) {
  if (spec.kind === "boolean") return input.checked === Boolean(spec.default) ? undefined : input.checked;
  const text = input.value.trim();
  if (text === "") return undefined;
  if (spec.kind === "choice") return text === String(spec.default) ? undefined : text;
  if (spec.kind === "integer" || spec.kind === "number") {
    return Number(text) === spec.default ? undefined : Number(text);
  }
  if (spec.kind === "number-or-word") return spec.choices.includes(text) ? text : Number(text);
  if (spec.kind === "list") return text.split(",").map((s) => s.trim()).filter(Boolean);
  if (spec.kind === "shapes") {
    const shapes = {};
    for (const part of text.split(",").map((s) => s.trim()).filter(Boolean)) {
      const at = part.lastIndexOf(":");
      shapes[part.slice(0, at)] = part.slice(at + 1).split("x").map(Number);
    }
    return shapes;
  }
  return text;
}

function config() {
  const options = {};
  for (const spec of optionSpecs) {
    const label = document.querySelector(`#options label[data-option="${spec.name}"]`);
    if (!label || label.hidden) continue;
    const value = optionValue(spec, $(`opt-${spec.name}`));
    if (value !== undefined) options[spec.name] = value;
  }
  return options;
}

async function loadOptions() {
  const response = await fetch("/v1/options");
  if (!response.ok) { $("options").textContent = `Options unavailable: ${await errorText(response)}`; return; }
  buildOptions(await response.json());
}

async function submitJob(event) {
  event.preventDefault();
  const message = $("form-message");
  const model = $("model").files[0];
  if (!model) { message.textContent = "Choose an .onnx model first."; message.className = "error"; return; }
  const form = new FormData();
  form.append("model", model, model.name);
  if ($("data").files[0]) form.append("data", $("data").files[0], $("data").files[0].name);
  form.append("config", JSON.stringify(config()));
  $("submit").disabled = true;
  message.className = "";
  message.textContent = "Uploading…";
  try {
    const response = await fetch("/v1/jobs", { method: "POST", body: form, headers: headers() });
    if (!response.ok) throw new Error(await errorText(response));
    const job = await response.json();
    message.textContent = `Job ${job.id} queued.`;
    refresh();
  } catch (error) {
    message.textContent = `Not accepted: ${error.message}`;
    message.className = "error";
  } finally {
    $("submit").disabled = false;
  }
}

async function download(url, filename, open) {
  const response = await fetch(url, { headers: headers() });
  if (!response.ok) { alert(await errorText(response)); return; }
  const blob = await response.blob();
  const href = URL.createObjectURL(blob);
  if (open) { window.open(href, "_blank", "noopener"); return; }
  const link = document.createElement("a");
  link.href = href;
  link.download = filename;
  document.body.appendChild(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(href), 10000);
}

function cell(row, text, className) {
  const td = row.insertCell();
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

function action(td, label, handler) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = "link";
  button.textContent = label;
  button.addEventListener("click", handler);
  td.appendChild(button);
}

function resultLinks(td, job) {
  if (job.status === "succeeded") {
    const report = document.createElement("a");
    report.href = `/v1/jobs/${encodeURIComponent(job.id)}/report.html`;
    report.textContent = "report";
    report.target = "_blank";
    report.className = "report-link";
    if ($("token").value.trim()) {
      report.addEventListener("click", (e) => { e.preventDefault(); download(report.href, "report.html", true); });
    }
    td.appendChild(report);
    action(td, "model", () => download(job.links.model, `${job.id}.onnx`));
    if (job.links.float_model) {  // a quantized job keeps its float pruned model too
      action(td, "float model", () => download(job.links.float_model, `${job.id}.float.onnx`));
    }
    action(td, "json", () => download(job.links.report, `${job.id}.report.json`));
    action(td, "plan", () => download(job.links.plan, `${job.id}.plan.json`));
  }
  action(td, ACTIVE.has(job.status) ? "cancel" : "delete", async () => {
    await fetch(job.links.self, { method: "DELETE", headers: headers() });
    refresh();
  });
}

function metric(report) {
  if (!report) return "";
  const e = report.evaluation;
  if (e) return `${e.metric} ${e.before.toFixed(4)} → ${e.after.toFixed(4)}`;
  if (report.fidelity) return `cosine ${report.fidelity.cosine_similarity.toFixed(4)} (random inputs)`;
  return "";
}

function render(jobs) {
  const body = document.querySelector("#jobs tbody");
  body.replaceChildren();
  $("jobs-empty").hidden = jobs.length > 0;
  for (const job of jobs) {
    const row = body.insertRow();
    row.dataset.jobId = job.id;
    row.dataset.status = job.status;
    cell(row, new Date(job.created_at).toLocaleTimeString());
    cell(row, job.id.slice(0, 10), "id").title = job.id;
    const status = cell(row, job.status, `status status-${job.status}`);
    if (job.error) {
      const why = document.createElement("div");
      why.className = "error";
      why.textContent = job.error.message;
      status.appendChild(why);
    }
    const progress = cell(row, "");
    const bar = document.createElement("progress");
    bar.max = 1;
    bar.value = job.progress;
    progress.appendChild(bar);
    progress.appendChild(document.createTextNode(` ${job.stage || ""}`));
    const macs = job.report && job.report.macs;
    cell(row, macs ? `${(macs.before / 1e6).toFixed(2)}M → ${(macs.after / 1e6).toFixed(2)}M` : "");
    cell(row, metric(job.report));
    resultLinks(cell(row, ""), job);
  }
}

async function refresh() {
  clearTimeout(pollTimer);
  let delay = 5000;
  try {
    const response = await fetch("/v1/jobs?limit=50", { headers: headers() });
    if (response.ok) {
      const list = await response.json();
      const jobs = await Promise.all(list.jobs.map(async (job) => {
        if (job.status !== "succeeded") return job;
        if (!finished.has(job.id)) {
          const full = await fetch(job.links.self, { headers: headers() });  // with its report
          if (!full.ok) return job;
          finished.set(job.id, await full.json());
        }
        return finished.get(job.id);
      }));
      render(jobs);
      if (jobs.some((job) => ACTIVE.has(job.status))) delay = 1000;
    }
  } finally {
    pollTimer = setTimeout(refresh, delay);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("job-form").addEventListener("submit", submitJob);
  $("data").addEventListener("change", showDataOptions);
  loadOptions();
  $("token").value = sessionStorage.getItem("onnxprune-token") || "";
  $("token").addEventListener("change", () => { sessionStorage.setItem("onnxprune-token", $("token").value); refresh(); });
  refresh();
});
