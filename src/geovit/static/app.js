// geovit page: upload a photo, show the top-k cells, the occlusion heatmap and an offline map.
// Everything is drawn here (SVG from the server's GeoJSON), so the page needs no external URL.
"use strict";

const $ = (id) => document.getElementById(id);
const SVG_NS = "http://www.w3.org/2000/svg";
const state = { cells: null, prediction: null, photoUrl: null, basemap: null, decoded: {}, zoom: "all" };

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
function rings(geometry) {
  if (geometry.type === "Polygon") return geometry.coordinates;
  if (geometry.type === "MultiPolygon") return geometry.coordinates.flat();
  return [];
}

function extentOf(features) {
  let [x0, y0, x1, y1] = [Infinity, Infinity, -Infinity, -Infinity];
  for (const f of features) {
    for (const ring of rings(f.geometry)) {
      for (const [lon, lat] of ring) {
        x0 = Math.min(x0, lon); x1 = Math.max(x1, lon);
        y0 = Math.min(y0, lat); y1 = Math.max(y1, lat);
      }
    }
  }
  if (!isFinite(x0)) return [-180, -90, 180, 90];
  const padX = Math.max((x1 - x0) * 0.08, 1);
  const padY = Math.max((y1 - y0) * 0.08, 1);
  return [x0 - padX, Math.max(y0 - padY, -90), x1 + padX, Math.min(y1 + padY, 90)];
}

function makeProjection(svg, extent) {
  const width = svg.clientWidth || 800;
  const height = svg.clientHeight || 440;
  const [x0, y0, x1, y1] = extent;
  const scale = Math.min(width / (x1 - x0), height / (y1 - y0));
  const offX = (width - (x1 - x0) * scale) / 2;
  const offY = (height - (y1 - y0) * scale) / 2;
  return {
    width, height,
    point: (lon, lat) => [offX + (lon - x0) * scale, offY + (y1 - lat) * scale],
  };
}

function pathData(geometry, project) {
  return rings(geometry)
    .map((ring) => "M" + ring.map(([lon, lat]) => project.point(lon, lat).map((v) => v.toFixed(1)).join(",")).join("L") + "Z")
    .join("");
}

function el(name, attrs, parent) {
  const node = document.createElementNS(SVG_NS, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (parent) parent.appendChild(node);
  return node;
}

function graticuleStep(span) {
  return [1, 2, 5, 10, 15, 30, 45].find((s) => span / s <= 8) || 60;
}

// Natural Earth lines (coastline, borders) from /basemap.json: integer deltas per line.
function basemapLines(extent) {
  const doc = state.basemap;
  if (!doc) return {};
  const [bx0, by0, bx1, by1] = doc.detail_box;
  const detailed = extent[0] >= bx0 && extent[1] >= by0 && extent[2] <= bx1 && extent[3] <= by1;
  const key = detailed ? "detail" : "world";
  if (!state.decoded[key]) {
    const scale = 10 ** -doc.precision;
    const decoded = {};
    for (const [layer, lines] of Object.entries(doc[key])) {
      decoded[layer] = lines.map((v) => {
        const pts = [];
        let x = 0, y = 0;
        for (let i = 0; i < v.length; i += 2) {
          x += v[i]; y += v[i + 1];
          pts.push([x * scale, y * scale]);
        }
        return pts;
      });
    }
    state.decoded[key] = decoded;
  }
  return state.decoded[key];
}

function drawBasemap(svg, extent, proj) {
  const layers = basemapLines(extent);
  const span = Math.max(extent[2] - extent[0], extent[3] - extent[1]);
  const group = el("g", { class: "basemap" }, svg);
  for (const layer of ["admin1", "admin0", "coastline"]) {
    if (!layers[layer] || (layer === "admin1" && span > 70)) continue;
    let d = "";
    // Cell rings may run past +-180; repeat the world where the view does.
    for (const shift of [-360, 0, 360]) {
      if (extent[2] < -180 + shift || extent[0] > 180 + shift) continue;
      for (const line of layers[layer]) {
        d += "M" + line.map(([lon, lat]) => proj.point(lon + shift, lat).map((v) => v.toFixed(1)).join(",")).join("L");
      }
    }
    el("path", { class: `base-${layer}`, d }, group);
  }
  if (state.basemap) {
    const credit = el("text", { class: "credit", x: proj.width - 6, y: proj.height - 6, "text-anchor": "end" }, svg);
    credit.textContent = "Natural Earth";
  }
}

function drawMap() {
  const svg = $("map");
  while (svg.firstChild) svg.removeChild(svg.firstChild);
  const base = state.cells ? state.cells.features : [];
  const pred = state.prediction ? state.prediction.geojson.features : [];
  const focus = state.zoom === "top" && pred.length ? pred : base.concat(pred);
  const extent = extentOf(focus);
  const proj = makeProjection(svg, extent);
  svg.setAttribute("viewBox", `0 0 ${proj.width} ${proj.height}`);

  const grid = el("g", { class: "graticule-layer" }, svg);
  const step = graticuleStep(Math.max(extent[2] - extent[0], extent[3] - extent[1]));
  for (let lon = Math.ceil(extent[0] / step) * step; lon <= extent[2]; lon += step) {
    const [a, b] = [proj.point(lon, extent[1]), proj.point(lon, extent[3])];
    el("line", { class: "graticule", x1: a[0], y1: a[1], x2: b[0], y2: b[1] }, grid);
  }
  for (let lat = Math.ceil(extent[1] / step) * step; lat <= extent[3]; lat += step) {
    const [a, b] = [proj.point(extent[0], lat), proj.point(extent[2], lat)];
    el("line", { class: "graticule", x1: a[0], y1: a[1], x2: b[0], y2: b[1] }, grid);
  }
  drawBasemap(svg, extent, proj);

  const cellLayer = el("g", { class: "cells-layer" }, svg);
  for (const f of base) {
    const p = el("path", { class: "cell", d: pathData(f.geometry, proj) }, cellLayer);
    el("title", {}, p).textContent = `${f.properties.name || f.properties.token} (${f.properties.count} photos)`;
  }

  if (!state.prediction) return;
  const predLayer = el("g", { class: "pred-layer" }, svg);
  const pmax = Math.max(...pred.map((f) => f.properties.probability), 1e-9);
  // Least probable first so the best cell ends on top. Small cells also get a disc at their
  // centroid (area ~ probability) so they stay visible on a world-wide map.
  for (const f of [...pred].reverse()) {
    const { probability: prob, rank, name, token, lat, lon } = f.properties;
    const opacity = (0.2 + 0.75 * prob / pmax).toFixed(3);
    const label = `#${rank} ${name || token}: ${(100 * prob).toFixed(1)}%`;
    const p = el("path", { class: "cell-pred", d: pathData(f.geometry, proj), "fill-opacity": opacity, "data-token": token }, predLayer);
    el("title", {}, p).textContent = label;
    const [cx, cy] = proj.point(lon, lat);
    const disc = el("circle", { class: "cell-disc", cx, cy, r: (3 + 9 * Math.sqrt(prob / pmax)).toFixed(1), "fill-opacity": opacity }, predLayer);
    el("title", {}, disc).textContent = label;
  }
  const best = state.prediction.best_guess;
  const [bx, by] = proj.point(best.lon, best.lat);
  el("path", { class: "best", d: `M${bx - 8},${by - 8}L${bx + 8},${by + 8}M${bx - 8},${by + 8}L${bx + 8},${by - 8}` }, predLayer);
  const label = el("text", { class: "label", x: bx + 11, y: by - 8 }, predLayer);
  label.textContent = "best guess";
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
    place.textContent = `${c.name || "cell " + c.token} — ${(100 * c.probability).toFixed(1)}%`;
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
  state.prediction = null;
  drawMap();
  setStatus(`Predicting ${file.name}…`);

  const body = new FormData();
  body.append("image", file);
  const response = await fetch("predict", { method: "POST", body });
  if (!response.ok) {
    setStatus("Prediction failed.");
    showError(await errorMessage(response));
    $("heatmap-status").textContent = "";
    return;
  }
  state.prediction = await response.json();
  renderTopK(state.prediction);
  drawMap();
  setStatus(`${file.name}: ${state.prediction.timing_ms.total.toFixed(0)} ms on the server`);
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
  for (const button of document.querySelectorAll("[data-zoom]")) {
    button.addEventListener("click", () => {
      state.zoom = button.dataset.zoom;
      for (const b of document.querySelectorAll("[data-zoom]")) b.classList.toggle("active", b === button);
      drawMap();
    });
  }
  let resizeTimer = null;
  window.addEventListener("resize", () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(drawMap, 150);
  });
}

async function init() {
  wire();
  try {
    const health = await (await fetch("health")).json();
    $("model-info").textContent = `${health.classes} cells · ${health.image_size}px input · ${health.backend}`;
    const [cells, basemap] = await Promise.all([fetch("cells"), fetch("basemap.json")]);
    if (cells.ok) state.cells = await cells.json();
    if (basemap.ok) state.basemap = await basemap.json();
  } catch (err) {
    showError(`cannot reach the geovit server: ${err}`);
  }
  drawMap();
  document.body.dataset.ready = "true";
}

init();
