// The review page: query form, facets, results, votes, exports, the side-by-side viewer and region search
// (draw a box on the query slide; the matching regions are outlined on the hit slides).

import { ApiError, adoptTokenFromAddress, getJson, imageUrl, postForm, postJson, setToken } from "./api.js";
import { clear, el, show } from "./dom.js";
import { refreshFacets } from "./facets.js";
import { exportHits, metadataOf, renderResults, renderVotes } from "./results.js";
import { closeViewer, openViewer, regionToolActive, setAttention, setRegionTool, showQueryBox, viewers } from "./viewer.js";

const $ = (selector) => document.querySelector(selector);
const DEFAULT_SHOWN = 3;
const REGIONS_PER_SLIDE = 5;
const DRAW_HINT = "draw a box on the query slide (drag while 'draw a region' is on): the matching regions are outlined here";
const state = {
  info: null, label: null, target: "slides", where: "", facets: {}, hidden: new Set(), showHidden: false,
  shownColumns: [], payload: null, lastRequest: null, regionBox: null,
};
window.reviewPage = { state, viewers }; // for the browser tests and for debugging in the console

function setStatus(text) {
  $("#status").textContent = text;
}

function showMessage(text, kind = "error") {
  const box = $("#message");
  box.textContent = text;
  box.className = kind;
  show(box, Boolean(text));
}

function selectedKind() {
  return $("#query-kind").value;
}

function updateQueryFields() {
  const kind = selectedKind();
  show($(".for-id"), kind === "slide_id" || kind === "sample_id");
  show($(".for-sample"), kind === "sample_id");
  show($(".for-prototype"), kind === "prototype");
  show($(".for-file"), kind === "features" || kind === "expression");
  show($(".for-sample"), kind === "expression");
  $("#query-file").accept = kind === "features" ? ".h5,.hdf5,.pt" : ".csv,.tsv,.txt,.parquet,.h5ad";
  $("#query-id").placeholder = kind === "sample_id" ? "expression or mutation sample id" : "slide id";
}

function settings() {
  return {
    target: $("#target").value, k: Number($("#k").value) || 10, where: $("#where").value.trim() || null,
    facets: state.facets, include_same_patient: $("#include-same-patient").checked,
    one_per_patient: $("#one-per-patient").checked,
  };
}

async function runSearch() {
  const kind = selectedKind();
  const options = settings();
  state.target = options.target;
  state.where = options.where || "";
  setStatus("searching…");
  showMessage("");
  let payload;
  try {
    if (kind === "features" || kind === "expression") {
      const file = $("#query-file").files[0];
      if (!file) throw new ApiError(400, "choose a file to upload");
      const form = new FormData();
      form.append("kind", kind);
      form.append("file", file);
      if ($("#query-sample").value.trim()) form.append("sample", $("#query-sample").value.trim());
      form.append("options", JSON.stringify(options));
      payload = await postForm("/api/search/upload", form);
    } else {
      const value = kind === "prototype" ? $("#query-prototype").value : $("#query-id").value.trim();
      if (!value) throw new ApiError(400, kind === "prototype" ? "the atlas has no prototypes" : "type an id");
      const body = { ...options, [kind]: value };
      if (kind === "sample_id" && $("#sample-modality").value) body.modality = $("#sample-modality").value;
      payload = await postJson("/api/search", body);
    }
  } catch (error) {
    setStatus("search refused");
    showMessage(error.message);
    return;
  }
  state.payload = payload;
  state.label = payload.votes ? payload.votes.label : null;
  const shownVid = viewers.query ? viewers.query.vid : null;
  const queryVid = payload.query.images ? payload.query.images.vid : null;
  if (!$("#viewer").hidden && shownVid !== queryVid) closeViewer($("#viewer"));  // it showed another query
  renderAll();
  setStatus(`${payload.hits.length} hits`);
  await updateFacets();
}

function renderAll() {
  const payload = state.payload;
  if (!payload) return;
  const query = payload.query;
  const summary = [`query: ${query.type} ${query.id}`, `→ ${query.target}`, `model ${query.model_id}`];
  if (query.type === "region" && query.region) {
    summary.splice(1, 0, `box ${query.region.join(",")} (level-0 px), ${query.patches} query patch${query.patches === 1 ? "" : "es"}`);
  }
  if (query.where) summary.push(`where ${query.where}`);
  if (query.facets) summary.push(`facets ${Object.entries(query.facets).map(([c, v]) => `${c} ∈ {${v.join(", ")}}`).join("; ")}`);
  if (query.one_per_patient) summary.push("one hit per patient");
  const summaryBox = clear($("#query-summary"));
  if (query.images && query.images.thumbnail) {
    const image = el("img", { class: "query-thumb", alt: `thumbnail of the query ${query.id}` });
    imageUrl(`/api/images/${query.images.vid}/thumbnail.png?size=128`).then((url) => { image.src = url; }).catch(() => image.remove());
    summaryBox.append(image);
  }
  summaryBox.append(el("span", { id: "query-text" }, summary.join(" · ")));
  if (regionSlideOf(query)) {
    summaryBox.append(el("button", { type: "button", id: "region-start", title: "open the query slide and draw a box on it",
                                     onclick: () => startRegionTool().catch((error) => showMessage(`viewer: ${error.message}`)) },
                         "search a region of this slide"));
  }
  if (payload.notes && payload.notes.length) showMessage(payload.notes.join("; "), "note");
  renderVotes($("#votes"), payload.votes);
  const shown = renderResults($("#results"), payload, state, {
    searchFrom: (hit) => searchFrom(hit), view: (hit) => viewHit(payload.query, hit),
    hide: (hit) => { state.hidden.add(hit.id); renderAll(); },
    emptyText: query.type === "region"
      ? "no matching regions (the filter or the same-patient exclusion may leave none; try another box)" : "no hits",
  });
  show($("#toolbar"), true);
  $("#hit-count").textContent = `${shown} of ${payload.hits.length} hits shown`;
  $("#show-hidden").textContent = `${state.showHidden ? "hide" : "show"} hidden (${state.hidden.size})`;
  renderColumnChooser();
}

// ---- region search ----

// The atlas slide a region can be drawn on: the query's own slide when it is one and has a raw image.
function regionSlideOf(query) {
  const atlasSlide = (query.type === "slide" || query.type === "region") && query.modality === "slides" && !query.file;
  return atlasSlide && query.images && query.images.wsi ? query.id : null;
}

function showRegionBar(query) {
  const slide = regionSlideOf(query);
  show($("#region-bar"), Boolean(slide));
  if (!slide) setRegionTool($("#viewer"), false);
}

async function viewHit(query, hit, emptyText) {
  try {
    await openViewer($("#viewer"), query, hit, emptyText);
    showRegionBar(query);
  } catch (error) {
    showMessage(`viewer: ${error.message}`);
  }
}

async function startRegionTool() {
  await viewHit(state.payload.query, null, DRAW_HINT);
  setRegionTool($("#viewer"), true, regionDrawn);
  $("#region-draw").focus();
}

function fillRegionForm(box) {
  [["#region-x", box.x], ["#region-y", box.y], ["#region-w", box.width], ["#region-h", box.height]]
    .forEach(([selector, value]) => { $(selector).value = String(value); });
}

function regionDrawn(box) {
  fillRegionForm(box);
  runRegion(box);
}

function typedRegion() {
  const [x, y, width, height] = ["#region-x", "#region-y", "#region-w", "#region-h"].map((s) => Number($(s).value));
  return { x, y, width, height };
}

async function runRegion(box) {
  const options = settings();
  const group = $("#region-group").value;
  state.regionBox = box;
  // The slide on the query pane: the shown query's own slide (a slide query, or the last region query).
  const slideId = state.payload ? regionSlideOf(state.payload.query) : null;
  if (!slideId) {
    showMessage("region search needs an atlas slide with a raw image as the query");
    return;
  }
  const body = { slide_id: slideId, region: { x: box.x, y: box.y, w: box.width, h: box.height }, k: options.k,
                 where: options.where, include_same_patient: options.include_same_patient, group_by: group,
                 regions_per_slide: REGIONS_PER_SLIDE };
  setStatus("searching regions…");
  showMessage("");
  let payload;
  try {
    payload = await postJson("/api/search/regions", body);
  } catch (error) {
    setStatus("region search refused");
    showMessage(error.message);
    const shown = state.payload && state.payload.query.region;  // the box of the results still on the page
    if (shown) showQueryBox({ x: shown[0], y: shown[1], width: shown[2], height: shown[3] });
    return;
  }
  state.payload = payload;
  state.hidden.clear();
  renderAll();
  setStatus(`${payload.hits.length} hits`);
  const skipped = [];
  if (Object.keys(state.facets).some((column) => state.facets[column].length)) skipped.push("facets");
  if (options.one_per_patient) skipped.push("one hit per patient");
  if (options.target !== "slides") skipped.push(`target ${options.target}`);
  if (skipped.length) {
    const notes = [...(payload.notes || []), `${skipped.join(", ")} do not apply to region searches (the SQL filter does)`];
    showMessage(notes.join("; "), "note");
  }
  const first = payload.hits.find((hit) => hit.images && hit.images.wsi);
  await viewHit(payload.query, first || null,
                payload.hits.length ? "no hit has a raw slide to view" : "no matching regions");
}

function rerun() {
  if (state.payload && state.payload.query.type === "region" && state.regionBox) runRegion(state.regionBox);
  else if (state.payload) runSearch();
  else updateFacets();
}

function searchFrom(hit) {
  $("#query-kind").value = hit.modality === "slides" ? "slide_id" : "sample_id";
  updateQueryFields();
  $("#query-id").value = hit.id;
  if (hit.modality !== "slides") $("#sample-modality").value = hit.modality;
  state.hidden.clear();
  runSearch();
}

async function updateFacets() {
  try {
    await refreshFacets($("#facets"), state, rerun);
  } catch (error) {
    showMessage(`facets: ${error.message}`);
  }
}

function renderColumnChooser() {
  const columns = state.info ? state.info.metadata_columns : [];
  const available = state.payload && state.payload.hits.length ? metadataOf(state.payload.hits[0]) : columns;
  const box = clear($("#columns"));
  for (const column of available) {
    const input = el("input", { type: "checkbox", dataset: { column }, checked: state.shownColumns.includes(column) });
    input.addEventListener("change", () => {
      state.shownColumns = input.checked ? [...state.shownColumns, column] : state.shownColumns.filter((c) => c !== column);
      localStorage.setItem("threads-search-columns", JSON.stringify(state.shownColumns));
      renderAll();
    });
    box.append(el("label", { class: "check" }, input, " ", column));
  }
}

let completionTimer = null;
function complete() {
  clearTimeout(completionTimer);
  const text = $("#query-id").value.trim();
  const kind = selectedKind();
  if (!text || (kind !== "slide_id" && kind !== "sample_id")) return;
  completionTimer = setTimeout(async () => {
    const modality = kind === "slide_id" ? "slides" : (state.info.items.expression ? "expression" : "mutations");
    try {
      const found = await getJson(`/api/complete?modality=${modality}&q=${encodeURIComponent(text)}&limit=20`);
      const list = clear($("#id-options"));
      for (const id of found.ids) list.append(el("option", { value: id }));
    } catch (_) { /* completion is a convenience */ }
  }, 150);
}

async function start() {
  adoptTokenFromAddress();
  let info;
  try {
    info = await getJson("/api/info");
  } catch (error) {
    if (error.status === 401) {
      show($("#token-form"), true);
      setStatus("token required");
      return;
    }
    setStatus("unavailable");
    showMessage(error.message);
    return;
  }
  state.info = info;
  state.label = info.label;
  const shortName = info.atlas.split("/").filter(Boolean).slice(-2).join("/");  // the full path is in the tooltip
  $("#atlas-name").textContent = `${shortName} · ${info.items.slides} slides, ${info.items.expression} expression, ` +
    `${info.items.mutations} mutation profiles · ${info.slides_with_wsi} slides with a raw image`;
  $("#atlas-name").title = info.atlas;
  const saved = JSON.parse(localStorage.getItem("threads-search-columns") || "null");
  state.shownColumns = saved || info.metadata_columns.filter((c) => c !== info.label).slice(0, DEFAULT_SHOWN);
  const prototypes = clear($("#query-prototype"));
  for (const set of info.prototypes) {
    for (const name of set.classes) prototypes.append(el("option", { value: `${set.name}:${name}` }, `${set.name}: ${name}`));
  }
  $("#k").max = 1000;
  setStatus("ready");
  renderColumnChooser();
  await updateFacets();
}

function wire() {
  $("#query-kind").addEventListener("change", updateQueryFields);
  $("#query-id").addEventListener("input", complete);
  $("#query-form").addEventListener("submit", (event) => { event.preventDefault(); state.hidden.clear(); runSearch(); });
  $("#target").addEventListener("change", () => { state.target = $("#target").value; state.facets = {}; updateFacets(); });
  $("#where").addEventListener("change", () => { state.where = $("#where").value.trim(); updateFacets(); });
  $("#one-per-patient").addEventListener("change", rerun);
  $("#include-same-patient").addEventListener("change", rerun);
  $("#clear-facets").addEventListener("click", () => { state.facets = {}; rerun(); });
  $("#region-draw").addEventListener("click", () => {
    setRegionTool($("#viewer"), !regionToolActive(), regionDrawn);
  });
  $("#region-bar").addEventListener("submit", (event) => {
    event.preventDefault();
    const box = typedRegion();
    showQueryBox(box);
    runRegion(box);
  });
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && regionToolActive()) setRegionTool($("#viewer"), false);
  });
  $("#show-hidden").addEventListener("click", () => { state.showHidden = !state.showHidden; renderAll(); });
  $("#export-csv").addEventListener("click", () => exportHits(state.payload, state, "csv"));
  $("#export-json").addEventListener("click", () => exportHits(state.payload, state, "json"));
  $("#viewer-close").addEventListener("click", () => closeViewer($("#viewer")));
  $("#attention-toggle").addEventListener("change", (event) => setAttention($("#viewer"), event.target.checked)
    .catch((error) => showMessage(`attention: ${error.message}`)));
  $("#token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    setToken($("#token-input").value);
    show($("#token-form"), false);
    start();
  });
  updateQueryFields();
}

wire();
start();
