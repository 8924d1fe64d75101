// FishEye web page: upload photos, show the top-5 classes for each. No external resources.
"use strict";

const input = document.getElementById("file-input");
const dropzone = document.getElementById("dropzone");
const results = document.getElementById("results");
const statusLine = document.getElementById("status");
const modelInfo = document.getElementById("model-info");
const template = document.getElementById("card-template");
const keyForm = document.getElementById("api-key-form");
const keyInput = document.getElementById("api-key");
const keyHelp = document.getElementById("api-key-help");
// A server started with FISHEYE_API_KEYS needs a key on every prediction. It is kept for this
// tab only (sessionStorage) and sent as `Authorization: Bearer <key>`.
const KEY_STORE = "fisheye-api-key";

const FRIENDLY = {
  empty_file: "This file is empty.",
  unsupported_media_type: "This is not a photo FishEye can read. Try a JPEG, PNG or WebP.",
  invalid_image: "This photo looks damaged or cut short. Try saving it again.",
  image_too_large: "This image has too many pixels.",
  file_too_large: "This file is too large.",
  request_too_large: "This file is too large.",
  overloaded: "The server is busy. Please try again in a moment.",
  model_not_ready: "The model is still loading. Please try again in a moment.",
  unauthorized: "This server needs an API key: enter it above, then add the photo again.",
  forbidden: "The API key was not accepted: enter another above, then add the photo again.",
};

function askForKey(message) {
  keyHelp.textContent = message;
  keyForm.hidden = false;
  keyInput.focus();
}

keyForm.addEventListener("submit", (e) => {
  e.preventDefault();
  const key = keyInput.value.trim();
  if (!key) return;
  sessionStorage.setItem(KEY_STORE, key);
  keyInput.value = "";
  keyForm.hidden = true;
  statusLine.textContent = "API key set for this tab. Add your photos again.";
});

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

function unsureText(topK) {
  const names = topK.slice(0, 2).map((item) => item.label);
  return `Not sure: looks most like ${names.join(" or ")}`;
}

function render(card, data) {
  // Below the model's abstention threshold the API answers label null, status "unsure".
  const unsure = data.status === "unsure";
  card.querySelector(".result-label").textContent = unsure ? unsureText(data.top_k) : data.label;
  card.classList.toggle("unsure", unsure);
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
    const key = sessionStorage.getItem(KEY_STORE);
    const headers = key ? { Authorization: `Bearer ${key}` } : {};
    const res = await fetch("/v1/predict", { method: "POST", body: form, headers });
    let data = null;
    try { data = await res.json(); } catch (_) { /* non-JSON body */ }
    if (res.status === 401 || res.status === 403) {
      if (res.status === 403) sessionStorage.removeItem(KEY_STORE);
      askForKey(res.status === 401 ? "This server needs an API key. It is kept in this " +
        "browser tab only." : "That API key was not accepted. Enter another.");
    }
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
