"use strict";
(function () {
  const data = JSON.parse(document.getElementById("gallery-data").textContent);
  const byId = (id) => document.getElementById(id);
  const state = { sort: data.sorts[0].id, category: "", min: null, max: null, page: 0 };
  const sortSelect = byId("sort"), categorySelect = byId("category");
  for (const s of data.sorts) sortSelect.add(new Option(s.label, s.id));
  for (const c of data.categories) categorySelect.add(new Option(c, c));
  if (!data.categories.length) categorySelect.parentElement.hidden = true;

  function byName(a, b) { return a.image < b.image ? -1 : a.image > b.image ? 1 : 0; }
  function comparator(spec) {
    // Missing values last, ties by image name: the order model/image_scores.py defines.
    return function (a, b) {
      const x = a[spec.field], y = b[spec.field];
      const xn = x === null || x === undefined, yn = y === null || y === undefined;
      if (xn !== yn) return xn ? 1 : -1;
      if (!xn && x !== y) {
        const order = x < y ? -1 : 1;
        return spec.descending ? -order : order;
      }
      return byName(a, b);
    };
  }
  function shown() {
    const spec = data.sorts.find((s) => s.id === state.sort);
    return data.cards.filter((c) => {
      if (state.category && c.category !== state.category) return false;
      if (state.min === null && state.max === null) return true;
      if (c.score === null || c.score === undefined) return false;
      const pct = 100 * c.score;
      return (state.min === null || pct >= state.min) && (state.max === null || pct <= state.max);
    }).sort(comparator(spec));
  }
  function el(tag, attrs, children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "text") node.textContent = v; else node.setAttribute(k, v);
    }
    for (const child of children || []) node.appendChild(child);
    return node;
  }
  function card(c) {
    const pics = c.images.map((img) => el("figure", img.bev ? { class: "bev" } : {}, [
      el("img", { src: img.src, alt: img.alt, title: img.alt }),
      ...(img.caption || img.bev ? [el("figcaption", { text: (img.caption ? img.caption + " " : "") + (img.bev ? "BEV" : "") })] : [])]));
    const figures = c.figures.map(([k, v]) => el("div", {}, [el("dt", { text: k }), el("dd", { text: v })]));
    return el("figure", { class: "card" + (c.pair ? " pair" : ""), "data-image": c.image,
                          "data-category": c.category }, [
      el("div", { class: "title" }, [el("b", { text: c.image }), el("span", { class: "cat", text: c.category })]),
      el("div", { class: "body" }, [...pics, el("dl", {}, figures)])]);
  }
  function render() {
    const list = shown();
    const pages = Math.max(1, Math.ceil(list.length / data.per_page));
    state.page = Math.min(state.page, pages - 1);
    const start = state.page * data.per_page;
    const slice = list.slice(start, start + data.per_page);
    const gallery = byId("gallery");
    gallery.replaceChildren(...slice.map(card));
    if (!slice.length) gallery.appendChild(el("p", { class: "empty", text: "No image matches the filter." }));
    byId("count").textContent = list.length + " of " + data.cards.length + " images";
    byId("page").textContent = "page " + (state.page + 1) + " of " + pages;
    byId("prev").disabled = state.page === 0;
    byId("next").disabled = state.page >= pages - 1;
    byId("pager").hidden = pages <= 1;
  }
  function number(input) { return input.value === "" ? null : Number(input.value); }
  sortSelect.addEventListener("change", () => { state.sort = sortSelect.value; state.page = 0; render(); });
  categorySelect.addEventListener("change", () => { state.category = categorySelect.value; state.page = 0; render(); });
  for (const id of ["min", "max"]) {
    byId(id).addEventListener("input", () => { state[id] = number(byId(id)); state.page = 0; render(); });
  }
  byId("prev").addEventListener("click", () => { state.page -= 1; render(); window.scrollTo(0, byId("gallery-section").offsetTop); });
  byId("next").addEventListener("click", () => { state.page += 1; render(); window.scrollTo(0, byId("gallery-section").offsetTop); });
  render();
})();
