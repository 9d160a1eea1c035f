// The side-by-side viewer: the query slide and a chosen hit in OpenSeadragon (DeepZoom tiles),
// zoom and pan synchronised at equal physical scale (microns per screen pixel, from each slide's
// mpp), a scale bar per pane, and the attention overlay drawn from the true values on the
// service's numeric colour scale. The region tool draws a box on the query slide (drag, or type
// its level-0 coordinates); region hits are outlined on their slides as OpenSeadragon overlays
// placed in level-0 pixels.

/* global OpenSeadragon */
import { authHeaders, getJson } from "./api.js";
import { clear, el, show } from "./dom.js";

const OVERLAY_MAX_SIDE = 2048;
// A patch's opacity grows with its distance from the slide's mean attention, so uniform regions leave the
// tissue visible and only what the model weighs more (red) or less (blue) than average is tinted.
const OVERLAY_MIN_ALPHA = 0.12;
const OVERLAY_MAX_ALPHA = 0.7;
const SCALE_BAR_PX = 120;
export const viewers = { query: null, hit: null };
// While `active`, a drag on the query pane draws a box instead of panning; `onBox` gets it in level-0 px.
const regionTool = { active: false, onBox: null, onCancel: null };
const MIN_DRAG_PX = 4;
const FIT_MARGIN = 1.6; // a hit pane opens on its regions' bounding box grown this many times
let syncing = false;
let attentionRun = 0; // overlays of an older request (the toggle flipped again) are dropped

function paneOf(section, name) {
  return section.querySelector(`#pane-${name}`);
}

function destroy(name) {
  if (viewers[name]) viewers[name].osd.destroy();
  viewers[name] = null;
}

function niceLength(microns) {
  const power = 10 ** Math.floor(Math.log10(microns));
  const step = [1, 2, 5, 10].find((m) => m * power >= microns) || 10;
  return step * power;
}

function updateScaleBar(entry) {
  const bar = entry.pane.querySelector(".scale-bar");
  const item = entry.osd.world.getItemAt(0);
  if (!item) return;
  if (!entry.info.mpp) {
    bar.querySelector(".scale-label").textContent = "no resolution recorded: no scale";
    bar.querySelector(".scale-line").style.width = "0px";
    return;
  }
  const screenPerImage = item.viewportToImageZoom(entry.osd.viewport.getZoom(true));
  const micronsPerScreenPx = entry.info.mpp / screenPerImage;
  const length = niceLength(SCALE_BAR_PX * micronsPerScreenPx);
  bar.querySelector(".scale-line").style.width = `${(length / micronsPerScreenPx).toFixed(1)}px`;
  bar.querySelector(".scale-label").textContent = length >= 1000 ? `${length / 1000} mm` : `${length} µm`;
  entry.pane.dataset.micronsPerPixel = micronsPerScreenPx.toPrecision(4);
}

function physicalView(entry, useMpp) {
  const item = entry.osd.world.getItemAt(0);
  const centre = item.viewportToImageCoordinates(entry.osd.viewport.getCenter(true));
  const screenPerImage = item.viewportToImageZoom(entry.osd.viewport.getZoom(true));
  return { fx: centre.x / entry.info.width, fy: centre.y / entry.info.height,
           micronsPerPx: (useMpp ? entry.info.mpp : 1) / screenPerImage };
}

function applyView(entry, view, useMpp) {
  const item = entry.osd.world.getItemAt(0);
  const screenPerImage = (useMpp ? entry.info.mpp : 1) / view.micronsPerPx;
  entry.osd.viewport.zoomTo(item.imageToViewportZoom(screenPerImage), null, true);
  entry.osd.viewport.panTo(item.imageToViewportCoordinates(view.fx * entry.info.width, view.fy * entry.info.height), true);
}

function follow(sourceName, section) {
  const source = viewers[sourceName];
  const target = viewers[sourceName === "query" ? "hit" : "query"];
  if (syncing || !source || !target || !section.querySelector("#viewer-sync").checked) return;
  if (!source.osd.world.getItemAt(0) || !target.osd.world.getItemAt(0)) return;
  syncing = true;
  try {
    const useMpp = Boolean(source.info.mpp && target.info.mpp);
    applyView(target, physicalView(source, useMpp), useMpp);
  } finally {
    syncing = false;
  }
}

async function loadPane(section, name, vid, title) {
  destroy(name);
  const pane = paneOf(section, name);
  pane.querySelector(".pane-title").textContent = title;
  const note = pane.querySelector(".pane-note");
  note.textContent = "";
  pane.dataset.tilesLoaded = "0";
  delete pane.dataset.attentionPatches;
  const container = clear(pane.querySelector(".osd"));
  if (!vid) {
    container.append(el("div", { class: "placeholder big" }, "the query has no slide image"));
    return;
  }
  const info = await getJson(`/api/images/${vid}`);
  if (!info.wsi) {
    container.append(el("div", { class: "placeholder big" },
      "no raw slide recorded for this slide (pair one with `ingest slides --wsi-dir`)"));
    return;
  }
  const wsi = info.wsi;
  const tileSource = { Image: { xmlns: "http://schemas.microsoft.com/deepzoom/2008", Url: `/api/images/${vid}/slide_files/`,
                                Format: wsi.format, Overlap: String(wsi.overlap), TileSize: String(wsi.tile_size),
                                Size: { Width: String(wsi.width), Height: String(wsi.height) } } };
  const osd = OpenSeadragon({
    element: container, tileSources: tileSource, showNavigationControl: false, loadTilesWithAjax: true,
    ajaxHeaders: authHeaders(), animationTime: 0.4, visibilityRatio: 0.5, maxZoomPixelRatio: 2,
    gestureSettingsMouse: { clickToZoom: false },
    drawer: "canvas", // the 2D canvas drawer composites the overlay's per-patch transparency as drawn
  });
  const entry = { osd, pane, info: { ...wsi, vid }, vid };
  osd.addHandler("tile-loaded", () => { pane.dataset.tilesLoaded = String(Number(pane.dataset.tilesLoaded) + 1); });
  osd.addHandler("update-viewport", () => updateScaleBar(entry));
  osd.addHandler("viewport-change", () => follow(name, section));
  // The pane counts as open (and takes overlays) only once its slide is: an overlay added before would be
  // dropped when the slide's own image replaces the empty world.
  await new Promise((resolve, reject) => {
    osd.addOnceHandler("open", resolve);
    osd.addOnceHandler("open-failed", (event) => reject(new Error(`tiles of ${title}: ${event.message}`)));
  });
  viewers[name] = entry;
  if (name === "query") attachRegionTool(entry);
  updateScaleBar(entry);
  if (!wsi.mpp) note.textContent = "the slide records no microns per pixel: zoom is synchronised in pixels";
}

function overlayAlpha(position) {
  const distance = Math.min(1, Math.abs(2 * position - 1));
  return OVERLAY_MIN_ALPHA + (OVERLAY_MAX_ALPHA - OVERLAY_MIN_ALPHA) * Math.sqrt(distance);
}

function colourAt(stops, position, alpha = 1) {
  const scaled = Math.min(1, Math.max(0, position)) * (stops.length - 1);
  const low = Math.floor(scaled);
  const high = Math.min(stops.length - 1, low + 1);
  const t = scaled - low;
  const rgb = (hex) => [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16));
  const [a, b] = [rgb(stops[low]), rgb(stops[high])];
  return `rgba(${a.map((v, i) => Math.round(v + t * (b[i] - v))).join(",")},${alpha.toFixed(3)})`;
}

function renderLegend(pane, data) {
  const legend = pane.querySelector(".legend");
  show(legend, true);
  legend.querySelector(".legend-title").textContent =
    `attention of model ${data.model_id} (${data.recipe}): patch weight / the slide's mean (1x = 1/${data.n_patches}), log2 scale`;
  const bar = legend.querySelector(".legend-bar");
  bar.style.background = `linear-gradient(to right, ${data.scale.colours.join(", ")})`;
  const ticks = clear(legend.querySelector(".legend-ticks"));
  for (const tick of data.scale.ticks) {
    ticks.append(el("span", { class: "tick", style: { left: `${(100 * tick.position).toFixed(2)}%` } }, tick.label));
  }
}

async function overlay(section, name, run) {
  const entry = viewers[name];
  if (!entry) return;
  const note = entry.pane.querySelector(".pane-note");
  let data;
  try {
    data = await getJson(`/api/images/${entry.vid}/attention.json`);
  } catch (error) {
    note.textContent = `no attention overlay: ${error.message}`;
    return;
  }
  if (run !== attentionRun || viewers[name] !== entry) return;
  if (data.fits_wsi === false) {
    note.textContent = "no attention overlay: the patch coordinates reach beyond this slide's image";
    return;
  }
  const { width, height } = entry.info;
  const downsample = Math.max(width, height) / OVERLAY_MAX_SIDE;
  const canvas = el("canvas", { width: Math.max(1, Math.round(width / downsample)),
                                height: Math.max(1, Math.round(height / downsample)) });
  const context = canvas.getContext("2d");
  const side = data.patch_size_level0 / downsample;
  data.coords.forEach(([x, y], i) => {
    context.fillStyle = colourAt(data.scale.colours, data.positions[i], overlayAlpha(data.positions[i]));
    context.fillRect(x / downsample, y / downsample, Math.max(1, side), Math.max(1, side));
  });
  await new Promise((resolve, reject) => entry.osd.addTiledImage({
    tileSource: { type: "image", url: canvas.toDataURL("image/png") }, x: 0, y: 0, width: 1,
    loadTilesWithAjax: false, success: resolve, error: (event) => reject(new Error(event.message || "overlay failed")),
  }));
  if (run !== attentionRun || viewers[name] !== entry) {  // switched off (or another slide opened) meanwhile
    if (entry.osd.world.getItemCount() > 1) entry.osd.world.removeItem(entry.osd.world.getItemAt(1));
    return;
  }
  entry.pane.dataset.attentionPatches = String(data.n_patches);
  renderLegend(entry.pane, data);
}

function removeOverlays(section) {
  for (const entry of Object.values(viewers)) {
    if (!entry) continue;
    while (entry.osd.world.getItemCount() > 1) entry.osd.world.removeItem(entry.osd.world.getItemAt(1));
    delete entry.pane.dataset.attentionPatches;
  }
  for (const legend of section.querySelectorAll(".legend")) show(legend, false);
}

export async function setAttention(section, on) {
  const run = ++attentionRun;
  removeOverlays(section);
  if (on) await Promise.all(["query", "hit"].map((name) => overlay(section, name, run)));
}

function emptyHitPane(section, text) {
  destroy("hit");
  const pane = paneOf(section, "hit");
  pane.querySelector(".pane-title").textContent = "hit";
  pane.querySelector(".pane-note").textContent = "";
  pane.dataset.tilesLoaded = "0";
  clear(pane.querySelector(".osd")).append(el("div", { class: "placeholder big" }, text));
}

// Opens the query slide and a hit (or, with hit null, the query slide alone, for the region tool).
// A query slide already open stays as it is (its zoom and drawn box). Region queries and region
// hits are outlined; their panes then open on their own regions, unsynchronised.
export async function openViewer(section, query, hit, emptyText = "choose a hit to view") {
  show(section, true);
  delete section.dataset.ready;
  const queryVid = query.images && query.images.wsi ? query.images.vid : null;
  const keepQuery = viewers.query && queryVid && viewers.query.vid === queryVid;
  await Promise.all([
    keepQuery ? Promise.resolve() : loadPane(section, "query", queryVid, `query: ${query.id}`),
    hit ? loadPane(section, "hit", hit.images.vid, `#${hit.rank} ${hit.id} (score ${hit.score.toFixed(4)})`)
      : Promise.resolve(emptyHitPane(section, emptyText)),
  ]);
  for (const legend of section.querySelectorAll(".legend")) show(legend, false);
  const regional = query.type === "region";
  if (regional) {
    section.querySelector("#viewer-sync").checked = false;
    outlineQuery(query);
    if (hit) outlineHit(hit);
  } else {
    if (viewers.query) for (const kind of ["query-box", "query-patch"]) removeOutlines(viewers.query, kind);
    follow("query", section);
  }
  if (section.querySelector("#attention-toggle").checked) await setAttention(section, true);
  section.dataset.ready = "true";
  section.scrollIntoView({ behavior: "smooth" });
}

export function closeViewer(section) {
  setRegionTool(section, false);
  destroy("query");
  destroy("hit");
  show(section, false);
}

// ---- region outlines and the region tool ----

function removeOutlines(entry, kind) {
  for (const node of [...entry.pane.querySelectorAll(`.region-box.${kind}`)]) entry.osd.removeOverlay(node);
}

// Boxes {x, y, width, height} (level-0 px) as overlays of one pane; each carries its coordinates in data-*.
function outline(name, boxes, kind) {
  const entry = viewers[name];
  if (!entry) return [];
  removeOutlines(entry, kind);
  const item = entry.osd.world.getItemAt(0);
  return boxes.filter((box) => box.x !== null && box.x !== undefined).map((box, index) => {
    const node = el("div", { class: `region-box ${kind}${index === 0 ? " best" : ""}`,
                             title: box.score !== undefined ? `similarity ${Number(box.score).toFixed(4)}` : null,
                             dataset: { x: box.x, y: box.y, width: box.width, height: box.height } });
    entry.osd.addOverlay({ element: node, location: item.imageToViewportRectangle(box.x, box.y, box.width, box.height) });
    return node;
  });
}

function fitTo(name, boxes) {
  const entry = viewers[name];
  const placed = boxes.filter((b) => b.x !== null && b.x !== undefined);
  if (!entry || !placed.length) return;
  const x0 = Math.min(...placed.map((b) => b.x));
  const y0 = Math.min(...placed.map((b) => b.y));
  const x1 = Math.max(...placed.map((b) => b.x + b.width));
  const y1 = Math.max(...placed.map((b) => b.y + b.height));
  const side = FIT_MARGIN * Math.max(x1 - x0, y1 - y0);
  const item = entry.osd.world.getItemAt(0);
  entry.osd.viewport.fitBounds(item.imageToViewportRectangle((x0 + x1 - side) / 2, (y0 + y1 - side) / 2, side, side), true);
}

export function regionBoxesOf(hit) {
  if (hit.regions && hit.regions.length) return hit.regions;
  return hit.x !== null && hit.x !== undefined ? [hit] : [];
}

function outlineQuery(query) {
  if (!viewers.query || !query.region) return;
  const [x, y, width, height] = query.region;
  outline("query", query.query_patches || [], "query-patch");
  outline("query", [{ x, y, width, height }], "query-box");
  viewers.query.pane.dataset.regionBox = [x, y, width, height].join(",");
}

function outlineHit(hit) {
  const boxes = regionBoxesOf(hit);
  const nodes = outline("hit", boxes, "hit-box");
  const pane = viewers.hit.pane;
  pane.dataset.regionBoxes = String(nodes.length);
  pane.querySelector(".pane-note").textContent = nodes.length
    ? `${nodes.length} matching region${nodes.length > 1 ? "s" : ""} outlined (the best solid); zoom and pan are not synchronised`
    : "this slide's patches have no coordinates: its regions cannot be drawn";
  fitTo("hit", boxes);
}

function viewportRect(start, end) {
  return new OpenSeadragon.Rect(Math.min(start.x, end.x), Math.min(start.y, end.y),
                                Math.abs(end.x - start.x), Math.abs(end.y - start.y));
}

// A drag on the query pane draws the box while the tool is on; the release reports it in level-0 px
// (clipped to the slide). A drag of a few screen pixels is a click, not a box.
function attachRegionTool(entry) {
  const { osd } = entry;
  let start = null;
  let startPx = null;
  let node = null;
  osd.addHandler("canvas-press", (event) => {
    if (!regionTool.active) return;
    event.preventDefaultAction = true;
    start = osd.viewport.viewerElementToViewportCoordinates(event.position);
    startPx = event.position;
    removeOutlines(entry, "query-box");
    removeOutlines(entry, "query-patch");
    node = el("div", { class: "region-box query-box drawing" });
    osd.addOverlay({ element: node, location: viewportRect(start, start) });
  });
  osd.addHandler("canvas-drag", (event) => {
    if (!regionTool.active || !start) return;
    event.preventDefaultAction = true;
    osd.updateOverlay(node, viewportRect(start, osd.viewport.viewerElementToViewportCoordinates(event.position)));
  });
  osd.addHandler("canvas-drag-end", (event) => { if (regionTool.active) event.preventDefaultAction = true; });
  osd.addHandler("canvas-release", (event) => {
    if (!regionTool.active || !start) return;
    event.preventDefaultAction = true;
    const end = osd.viewport.viewerElementToViewportCoordinates(event.position);
    const moved = Math.max(Math.abs(event.position.x - startPx.x), Math.abs(event.position.y - startPx.y));
    const rect = entry.osd.world.getItemAt(0).viewportToImageRectangle(viewportRect(start, end));
    start = null;
    if (moved < MIN_DRAG_PX) {
      osd.removeOverlay(node);
      return;
    }
    const x0 = Math.max(0, Math.round(rect.x));
    const y0 = Math.max(0, Math.round(rect.y));
    const x1 = Math.min(entry.info.width, Math.round(rect.x + rect.width));
    const y1 = Math.min(entry.info.height, Math.round(rect.y + rect.height));
    osd.removeOverlay(node);
    if (x1 <= x0 || y1 <= y0) return;
    const box = { x: x0, y: y0, width: x1 - x0, height: y1 - y0 };
    outline("query", [box], "query-box");
    if (regionTool.onBox) regionTool.onBox(box);
  });
}

// The tool on or off: the button's pressed state, a crosshair over the query slide, Escape to leave it.
export function setRegionTool(section, on, onBox = null) {
  regionTool.active = on;
  if (onBox) regionTool.onBox = onBox;
  const button = section.querySelector("#region-draw");
  button.setAttribute("aria-pressed", String(on));
  paneOf(section, "query").classList.toggle("drawing", on);
}

export function regionToolActive() {
  return regionTool.active;
}

export function showQueryBox(box) {
  outline("query", [box], "query-box");
}
