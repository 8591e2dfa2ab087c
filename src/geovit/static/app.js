// geovit page: upload a photo, show the top-k cells, the occlusion heatmap and an offline map.
// Everything is drawn here (SVG from the server's GeoJSON), so the page needs no external URL.
"use strict";

const $ = (id) => document.getElementById(id);
const SVG_NS = "http://www.w3.org/2000/svg";
const state = { prediction: null, photoUrl: null, file: null };

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

function setStatus(message) {
  $("status").textContent = message;
}

async function errorMessage(response) {
  try {
    const body = await response.json();
    return body.detail || JSON.stringify(body);
  } catch (_) {
    return `${response.status} ${response.statusText}`;
  }
}

function fmtCoord(lat, lon) {
  const ns = lat >= 0 ? "N" : "S";
  const ew = lon >= 0 ? "E" : "W";
  return `${Math.abs(lat).toFixed(3)}°${ns}, ${Math.abs(lon).toFixed(3)}°${ew}`;
}

// ---------------------------------------------------------------- map
// The server draws the map (geovit.maps.probability_map_html): the same projection, colours and
// marks as `geovit map`, so the page and the PNG/HTML maps look alike.
function trueLocation() {
  const lat = $("true-lat").value.trim(), lon = $("true-lon").value.trim();
  return lat && lon ? { lat, lon } : null;
}

async function loadMap(file) {
  const body = new FormData();
  body.append("image", file);
  const truth = trueLocation();
  if (truth) { body.append("lat", truth.lat); body.append("lon", truth.lon); }
  const response = await fetch("map", { method: "POST", body });
  const frame = $("map-frame");
  if (!response.ok) {
    frame.hidden = true;
    showError(`map failed: ${await errorMessage(response)}`);
    return;
  }
  frame.srcdoc = await response.text();
  frame.hidden = false;
  const km = response.headers.get("x-geovit-error-km");
  const note = $("truth-error");
  note.textContent = km ? `Best guess is ${Number(km).toLocaleString("en")} km from the true location.` : "";
  note.hidden = !km;
  frame.dataset.loaded = "true";
}

// ---------------------------------------------------------------- results
function renderTopK(pred) {
  const list = $("topk");
  list.textContent = "";
  for (const c of pred.top_k) {
    const li = document.createElement("li");
    li.dataset.token = c.token;
    const place = document.createElement("div");
    place.className = "place";
    place.textContent = `${c.name ? "most photos near " + c.name : "cell " + c.token} — ${(100 * c.probability).toFixed(1)}%`;
    const meta = document.createElement("div");
    meta.className = "meta";
    meta.textContent = `${fmtCoord(c.lat, c.lon)} · S2 ${c.token} (level ${c.level})`;
    const bar = document.createElement("div");
    bar.className = "bar";
    const fill = document.createElement("span");
    fill.style.width = `${Math.max(1, 100 * c.probability).toFixed(1)}%`;
    bar.appendChild(fill);
    li.append(place, meta, bar);
    list.appendChild(li);
  }
  const best = $("best-guess");
  best.textContent = `Best guess: ${fmtCoord(pred.best_guess.lat, pred.best_guess.lon)}`;
  best.hidden = false;
}

async function loadHeatmap(file) {
  const status = $("heatmap-status");
  status.textContent = "computing occlusion heatmap…";
  const body = new FormData();
  body.append("image", file);
  // Stride 16 (the API default is the design's 8) keeps the page responsive on a CPU server:
  // about 4x fewer occluded copies, the same 32 px patch.
  const response = await fetch("explain?stride=16", { method: "POST", body });
  if (!response.ok) {
    status.textContent = `heatmap failed: ${await errorMessage(response)}`;
    return;
  }
  const url = URL.createObjectURL(await response.blob());
  const overlay = $("heatmap");
  overlay.onload = () => URL.revokeObjectURL(url);
  overlay.src = url;
  overlay.hidden = !$("heatmap-toggle").checked;
  overlay.dataset.loaded = "true";
  status.textContent = `heatmap for cell ${response.headers.get("x-geovit-target-token") || ""} in ${response.headers.get("x-geovit-time-ms") || "?"} ms`;
}

async function handleFile(file) {
  if (!file) return;
  showError("");
  if (state.photoUrl) URL.revokeObjectURL(state.photoUrl);
  state.photoUrl = URL.createObjectURL(file);
  $("photo").src = state.photoUrl;
  $("photo-wrap").hidden = false;
  $("heatmap").hidden = true;
  $("heatmap").removeAttribute("src");
  delete $("heatmap").dataset.loaded;
  $("heatmap-controls").hidden = false;
  $("topk").textContent = "";
  $("best-guess").hidden = true;
  $("truth-error").hidden = true;
  $("map-frame").hidden = true;
  delete $("map-frame").dataset.loaded;
  state.prediction = null;
  state.file = null;
  setStatus(`Predicting ${file.name}…`);

  const body = new FormData();
  body.append("image", file);
  const response = await fetch("predict", { method: "POST", body });
  if (!response.ok) {
    setStatus("Prediction failed.");
    showError(`${file.name}: ${await errorMessage(response)}`);
    // No broken-image icon: the photo the server refused is not shown.
    $("photo-wrap").hidden = true;
    $("photo").removeAttribute("src");
    $("heatmap-controls").hidden = true;
    $("heatmap-status").textContent = "";
    return;
  }
  state.prediction = await response.json();
  state.file = file;
  renderTopK(state.prediction);
  setStatus(`${file.name}: ${state.prediction.timing_ms.total.toFixed(0)} ms on the server`);
  await loadMap(file);
  await loadHeatmap(file);
}

// ---------------------------------------------------------------- wiring
function wire() {
  $("file-input").addEventListener("change", (e) => handleFile(e.target.files[0]));
  const zone = $("dropzone");
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("dragover"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("dragover"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("dragover");
    handleFile(e.dataTransfer.files[0]);
  });
  $("heatmap-toggle").addEventListener("change", (e) => {
    $("heatmap").hidden = !e.target.checked || !$("heatmap").dataset.loaded;
  });
  $("heatmap-opacity").addEventListener("input", (e) => { $("heatmap").style.opacity = e.target.value; });
  $("heatmap").style.opacity = $("heatmap-opacity").value;
  for (const id of ["true-lat", "true-lon"]) {
    $(id).addEventListener("change", () => { if (state.file) loadMap(state.file); });
  }
  $("photo").addEventListener("error", () => { $("photo-wrap").hidden = true; });
}

async function init() {
  wire();
  try {
    const health = await (await fetch("health")).json();
    $("model-info").textContent = `${health.classes} cells · ${health.image_size}px input · ${health.backend}`;
  } catch (err) {
    showError(`cannot reach the geovit server: ${err}`);
  }
  document.body.dataset.ready = "true";
}

init();
