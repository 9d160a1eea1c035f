// The side-by-side viewer: the query slide and a chosen hit in OpenSeadragon (DeepZoom tiles),
// zoom and pan synchronised at equal physical scale (microns per screen pixel, from each slide's
// mpp), a scale bar per pane, and the attention overlay drawn from the true values on the
// service's numeric colour scale.

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

export async function openViewer(section, query, hit) {
  show(section, true);
  delete section.dataset.ready;
  const queryVid = query.images && query.images.wsi ? query.images.vid : null;
  await Promise.all([loadPane(section, "query", queryVid, `query: ${query.id}`),
                     loadPane(section, "hit", hit.images.vid, `#${hit.rank} ${hit.id} (score ${hit.score.toFixed(4)})`)]);
  for (const legend of section.querySelectorAll(".legend")) show(legend, false);
  follow("query", section);
  if (section.querySelector("#attention-toggle").checked) await setAttention(section, true);
  section.dataset.ready = "true";
  section.scrollIntoView({ behavior: "smooth" });
}

export function closeViewer(section) {
  destroy("query");
  destroy("hit");
  show(section, false);
}
