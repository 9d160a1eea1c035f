// The facet panel: value counts under the current filter; a ticked value goes into the next search.

import { postJson } from "./api.js";
import { clear, el } from "./dom.js";

const SHOWN_VALUES = 8;

export async function refreshFacets(container, state, onChange) {
  const counts = await postJson("/api/facets", { target: state.target, where: state.where || null, facets: state.facets });
  clear(container);
  for (const [column, values] of Object.entries(counts.facets)) {
    const chosen = new Set(state.facets[column] || []);
    const list = el("div", { class: "facet-values" });
    values.forEach((entry, position) => {
      const value = entry.value;
      const box = el("input", { type: "checkbox", dataset: { facetColumn: column, facetValue: value ?? "" },
                                checked: chosen.has(value) });
      box.addEventListener("change", () => {
        const selected = new Set(state.facets[column] || []);
        if (box.checked) selected.add(value); else selected.delete(value);
        if (selected.size) state.facets[column] = [...selected]; else delete state.facets[column];
        onChange();
      });
      const row = el("label", { class: "facet-value" + (position >= SHOWN_VALUES && !chosen.has(value) ? " extra" : "") },
        box, " ", value ?? "(missing)", " ", el("span", { class: "count" }, `(${entry.count})`));
      list.append(row);
    });
    const fieldset = el("fieldset", { class: "facet", dataset: { column } }, el("legend", {}, column), list);
    if (values.length > SHOWN_VALUES) {
      fieldset.append(el("button", { type: "button", class: "more",
        onclick: (event) => { fieldset.classList.toggle("expanded");
                              event.target.textContent = fieldset.classList.contains("expanded") ? "fewer" : `all ${values.length}`; } },
        `all ${values.length}`));
    }
    container.append(fieldset);
  }
}
