// The results grid, the majority-vote panel and the exports.

import { imageUrl } from "./api.js";
import { clear, download, el, formatValue, show } from "./dom.js";

const FIXED_COLUMNS = ["rank", "id", "modality", "patient_id", "score"];
const SERVICE_FIELDS = new Set(["vid", "images"]);
let objectUrls = [];

export function metadataOf(hit) {
  return Object.keys(hit).filter((key) => !FIXED_COLUMNS.includes(key) && !SERVICE_FIELDS.has(key));
}

function thumbnail(hit) {
  const box = el("div", { class: "thumb-box" });
  if (!hit.images || !hit.images.thumbnail) {
    box.append(el("div", { class: "placeholder" }, hit.modality === "slides" ? "no slide image recorded" : hit.modality));
    return box;
  }
  const image = el("img", { class: "thumb", alt: `thumbnail of ${hit.id}`, hidden: true });
  const loading = el("div", { class: "placeholder loading" }, "loading…");
  image.addEventListener("load", () => { loading.remove(); image.hidden = false; });
  box.append(loading, image);
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
  if (!payload.hits.length) container.append(el("p", { class: "empty" }, "no hits"));
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
  const text = String(value);
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
  const columns = [...FIXED_COLUMNS, ...(hits.length ? metadataOf(hits[0]) : [])];
  const lines = [columns.join(","), ...hits.map((hit) => columns.map((c) => csvCell(hit[c])).join(","))];
  download(`${stem}.csv`, "text/csv", lines.join("\n") + "\n");
}
