// FishEye web page: upload photos, show the top-5 classes for each. No external resources.
"use strict";

const input = document.getElementById("file-input");
const dropzone = document.getElementById("dropzone");
const results = document.getElementById("results");
const statusLine = document.getElementById("status");
const modelInfo = document.getElementById("model-info");
const template = document.getElementById("card-template");

const FRIENDLY = {
  empty_file: "This file is empty.",
  unsupported_media_type: "This is not a photo FishEye can read. Try a JPEG, PNG or WebP.",
  invalid_image: "This photo looks damaged or cut short. Try saving it again.",
  image_too_large: "This image has too many pixels.",
  file_too_large: "This file is too large.",
  request_too_large: "This file is too large.",
  overloaded: "The server is busy. Please try again in a moment.",
  model_not_ready: "The model is still loading. Please try again in a moment.",
};

async function loadModel() {
  try {
    const res = await fetch("/v1/model");
    if (!res.ok) throw new Error(`status ${res.status}`);
    const m = await res.json();
    modelInfo.textContent = `Model ${m.name} · version ${m.version} · ${m.classes.length} classes`;
    modelInfo.dataset.version = m.version;
  } catch (err) {
    modelInfo.textContent = "Model not ready yet; retrying…";
    setTimeout(loadModel, 2000);
  }
}

function showError(card, message) {
  card.classList.add("failed");
  const el = card.querySelector(".error");
  el.textContent = message;
  el.hidden = false;
}

function render(card, data) {
  card.querySelector(".result-label").textContent = data.label;
  card.querySelector(".confidence").textContent = `${(data.confidence * 100).toFixed(1)}%`;
  const bars = card.querySelector(".bars");
  bars.replaceChildren();
  for (const item of data.top_k) {
    const pct = (item.probability * 100).toFixed(1);
    const li = document.createElement("li");
    li.className = "bar";
    li.innerHTML = '<span class="bar-label"></span><span class="bar-track">' +
      '<span class="bar-fill"></span></span><span class="bar-value"></span>';
    li.querySelector(".bar-label").textContent = item.label;
    li.querySelector(".bar-fill").style.width = `${pct}%`;
    li.querySelector(".bar-value").textContent = `${pct}%`;
    li.setAttribute("aria-label", `${item.label}: ${pct} percent`);
    bars.appendChild(li);
  }
  // Out-of-distribution photo: warn plainly, but still show the prediction.
  const ood = data.in_distribution === false;
  card.querySelector(".ood-warning").hidden = !ood;
  card.classList.toggle("ood", ood);
  card.querySelector(".meta").textContent =
    `${data.model.name} ${data.model.version} · ${data.latency_ms.toFixed(0)} ms`;
  card.classList.add("done");
}

async function predictOne(file) {
  const card = template.content.firstElementChild.cloneNode(true);
  card.querySelector(".filename").textContent = file.name;
  const img = card.querySelector(".preview");
  img.alt = `Preview of ${file.name}`;
  img.src = URL.createObjectURL(file);
  img.addEventListener("error", () => { img.hidden = true; });
  results.prepend(card);
  const form = new FormData();
  form.append("file", file, file.name);
  try {
    const res = await fetch("/v1/predict", { method: "POST", body: form });
    let data = null;
    try { data = await res.json(); } catch (_) { /* non-JSON body */ }
    if (!res.ok) {
      const friendly = data && FRIENDLY[data.error];
      showError(card, friendly || (data && data.detail) || `The server answered ${res.status}.`);
      return false;
    }
    render(card, data);
    return true;
  } catch (err) {
    showError(card, "Cannot reach the FishEye server. Is it still running?");
    return false;
  }
}

async function handleFiles(fileList) {
  const files = Array.from(fileList);
  if (!files.length) return;
  statusLine.textContent = `Recognising ${files.length} photo${files.length > 1 ? "s" : ""}…`;
  const outcomes = await Promise.all(files.map(predictOne));
  const ok = outcomes.filter(Boolean).length;
  statusLine.textContent = `${ok} of ${files.length} photo${files.length > 1 ? "s" : ""} recognised.`;
}

input.addEventListener("change", () => {
  handleFiles(input.files);
  input.value = "";
});

for (const type of ["dragenter", "dragover"]) {
  dropzone.addEventListener(type, (e) => {
    e.preventDefault();
    dropzone.classList.add("dragging");
  });
}
for (const type of ["dragleave", "drop"]) {
  dropzone.addEventListener(type, (e) => {
    e.preventDefault();
    dropzone.classList.remove("dragging");
  });
}
dropzone.addEventListener("drop", (e) => handleFiles(e.dataTransfer.files));
loadModel();
