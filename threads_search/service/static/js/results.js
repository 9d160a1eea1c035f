// The results grid, the majority-vote panel and the exports.

import { getJson, imageUrl } from "./api.js";
import { clear, download, el, formatValue, show } from "./dom.js";
import { regionBoxesOf } from "./viewer.js";

const FIXED_COLUMNS = ["rank", "id", "modality", "patient_id", "score"];
const SERVICE_FIELDS = new Set(["vid", "images"]);
const REGION_FIELDS = new Set(["x", "y", "width", "height", "patch", "patch_id", "regions", "votes",
                               "best_region_score", "matched_query_patches"]);
let objectUrls = [];
const slideSizes = new Map(); // vid -> promise of the raw slide's level-0 {width, height} (null without one)

export function metadataOf(hit) {
  return Object.keys(hit).filter((key) => !FIXED_COLUMNS.includes(key) && !SERVICE_FIELDS.has(key)
    && !REGION_FIELDS.has(key));
}

function slideSize(vid) {
  if (!slideSizes.has(vid)) {
    slideSizes.set(vid, getJson(`/api/images/${vid}`).then((info) => info.wsi).catch(() => null));
  }
  return slideSizes.get(vid);
}

// A region hit's boxes over its thumbnail, placed in percent of the slide's level-0 size (the thumbnail
// shows the whole slide), so they scale with the picture.
async function outlineThumbnail(layer, hit, boxes) {
  const size = await slideSize(hit.images.vid);
  if (!size) return;
  boxes.forEach((box, index) => {
    const percent = (value, total) => `${(100 * value / total).toFixed(3)}%`;
    layer.append(el("div", { class: `thumb-region${index === 0 ? " best" : ""}`,
      dataset: { x: box.x, y: box.y, width: box.width, height: box.height },
      style: { left: percent(box.x, size.width), top: percent(box.y, size.height),
               width: percent(box.width, size.width), height: percent(box.height, size.height) } }));
  });
  layer.dataset.outlined = String(boxes.length);
}

function thumbnail(hit) {
  const box = el("div", { class: "thumb-box" });
  if (!hit.images || !hit.images.thumbnail) {
    box.append(el("div", { class: "placeholder" }, hit.modality === "slides" ? "no slide image recorded" : hit.modality));
    return box;
  }
  const image = el("img", { class: "thumb", alt: `thumbnail of ${hit.id}`, hidden: true });
  const loading = el("div", { class: "placeholder loading" }, "loading…");
  const boxes = regionBoxesOf(hit).filter((b) => b.x !== null && b.x !== undefined);
  const layer = boxes.length ? el("div", { class: "thumb-regions" }) : null;
  image.addEventListener("load", () => {
    loading.remove();
    image.hidden = false;
    if (layer) outlineThumbnail(layer, hit, boxes);
  });
  box.append(loading, el("div", { class: "thumb-frame" }, image, layer));
  imageUrl(`/api/images/${hit.images.vid}/thumbnail.png?size=256`)
    .then((url) => { objectUrls.push(url); image.src = url; })
    .catch((error) => { box.replaceChildren(el("div", { class: "placeholder" }, `image unavailable: ${error.message}`)); });
  return box;
}

function card(hit, state, actions) {
  const label = state.label ? hit[state.label] : null;
  const details = state.shownColumns.filter((column) => column !== state.label && column in hit)
    .map((column) => el("div", { class: "meta" }, el("span", { class: "key" }, column), " ", formatValue(hit[column])));
  const canView = hit.images && hit.images.wsi;
  return el("article", { class: "hit", dataset: { id: hit.id, rank: hit.rank } },
    thumbnail(hit),
    el("div", { class: "hit-head" },
      el("span", { class: "rank" }, `#${hit.rank}`),
      el("span", { class: "score", title: "cosine similarity" }, hit.score.toFixed(4))),
    el("div", { class: "hit-id", title: hit.id }, hit.id),
    el("div", { class: "patient" }, "patient ", hit.patient_id),
    hit.votes !== undefined && hit.regions ? el("div", { class: "region-count" },
      `${hit.votes} region votes · best region ${Number(hit.best_region_score).toFixed(4)}`) : null,
    hit.regions === undefined && hit.x !== undefined && hit.x !== null ? el("div", { class: "region-count" },
      `region ${hit.x},${hit.y} (${hit.width}×${hit.height} px)`) : null,
    state.label ? el("div", { class: "label" }, `${state.label}: ${formatValue(label)}`) : null,
    details,
    el("div", { class: "hit-actions" },
      el("button", { type: "button", class: "search-from", title: "use this hit as the query",
                     onclick: () => actions.searchFrom(hit) }, "search from this"),
      canView ? el("button", { type: "button", class: "view-hit", onclick: () => actions.view(hit) }, "view") : null,
      el("button", { type: "button", class: "hide-hit", onclick: () => actions.hide(hit) }, "hide")));
}

export function renderResults(container, payload, state, actions) {
  for (const url of objectUrls) URL.revokeObjectURL(url);
  objectUrls = [];
  clear(container);
  const visible = payload.hits.filter((hit) => state.showHidden || !state.hidden.has(hit.id));
  for (const hit of visible) {
    const node = card(hit, state, actions);
    if (state.hidden.has(hit.id)) node.classList.add("is-hidden");
    container.append(node);
  }
  if (!payload.hits.length) container.append(el("p", { class: "empty" }, actions.emptyText || "no hits"));
  return visible.length;
}

export function renderVotes(section, votes) {
  show(section, Boolean(votes));
  if (!votes) return;
  section.querySelector("#majority").textContent = votes.majority || "";
  const body = clear(section.querySelector("tbody"));
  for (const entry of votes.classes) {
    const hitShare = votes.n_hits ? entry.votes / votes.n_hits : 0;
    const bar = el("div", { class: "vote-bar" },
      el("div", { class: "vote-fill", style: { width: `${(100 * hitShare).toFixed(1)}%` } }),
      el("div", { class: "vote-base", title: `${(100 * entry.database_share).toFixed(1)} % of the database`,
                  style: { left: `${(100 * entry.database_share).toFixed(1)}%` } }));
    body.append(el("tr", { class: entry.votes ? "voted" : "", dataset: { value: entry.value } },
      el("td", {}, entry.value), el("td", { class: "votes" }, String(entry.votes)),
      el("td", { class: "bar-cell" }, bar,
        el("span", { class: "share" }, `${(100 * entry.database_share).toFixed(1)} % of database`))));
  }
}

function csvCell(value) {
  if (value === null || value === undefined) return "";
  const text = typeof value === "object" ? JSON.stringify(value) : String(value);
  return /[",\n\r]/.test(text) ? `"${text.replaceAll('"', '""')}"` : text;
}

export function exportHits(payload, state, format) {
  const hits = payload.hits.filter((hit) => !state.hidden.has(hit.id))
    .map((hit) => Object.fromEntries(Object.entries(hit).filter(([key]) => !SERVICE_FIELDS.has(key))));
  const stem = `hits-${String(payload.query.id).replace(/[^A-Za-z0-9._-]+/g, "_")}`;
  if (format === "json") {
    download(`${stem}.json`, "application/json", JSON.stringify({ query: payload.query, hits }, null, 2));
    return;
  }
  const columns = [...FIXED_COLUMNS, ...(hits.length ? Object.keys(hits[0]).filter((c) => !FIXED_COLUMNS.includes(c)) : [])];
  const lines = [columns.join(","), ...hits.map((hit) => columns.map((c) => csvCell(hit[c])).join(","))];
  download(`${stem}.csv`, "text/csv", lines.join("\n") + "\n");
}
