"use strict";

// The search page: one query, one column of results per mode (native beside the collection's inter-modal
// mode for same-modality searches), and each result a button that searches by it.

const MODE_NOTES = {
  native: "same space: the query's CLIP vector against the gallery's",
  gallery_inverted: "across the gap: the query against the gallery's inverted vectors",
  query_inverted: "across the gap: the inverted query against the gallery",
  fused: "both inter-modal routes, rank-fused",
};

const state = { info: null, query: null };

function $(id) { return document.getElementById(id); }

function say(message, isError) {
  const status = $("status");
  status.textContent = message;
  status.classList.toggle("error", Boolean(isError));
}

async function fetchJSON(url, options) {
  const response = await fetch(url, options);
  let body = null;
  try { body = await response.json(); } catch (e) { body = null; }
  if (!response.ok) {
    const message = body && body.error ? body.error : `${response.status} ${response.statusText}`;
    throw new Error(message);
  }
  return body;
}

async function loadInfo() {
  try {
    const info = await fetchJSON("/api/info");
    state.info = info;
    $("collection").textContent = `collection ${info.collection} \u00b7 model ${info.model || "unknown"} \u00b7 ` +
      `${info.counts.images} images, ${info.counts.texts} texts`;
    $("limit").max = info.limits.max_limit;
  } catch (e) {
    $("collection").textContent = "";
    say(`The collection could not be described: ${e.message}`, true);
  }
}

function galleryModality() { return $("gallery").value === "texts" ? "text" : "image"; }

function modesFor(queryModality) {
  const gallery = $("gallery").value;
  if (queryModality !== galleryModality()) return ["native"];
  const compare = state.info ? state.info.compare_modes[gallery] : "gallery_inverted";
  return compare === "native" ? ["native"] : ["native", compare];
}

function searchRequest(query, mode) {
  const params = new URLSearchParams({ mode, gallery: $("gallery").value, limit: $("limit").value || "12" });
  if (query.kind === "text") params.set("text", query.value);
  if (query.kind === "id") params.set("id", query.value);
  if (query.kind !== "image") return fetchJSON(`/api/search?${params}`);
  const form = new FormData();
  form.append("image", query.file, query.file.name);
  return fetchJSON(`/api/search?${params}`, { method: "POST", body: form });
}

function showQuery(query, result) {
  const section = $("query");
  const thumb = $("query-thumb");
  section.hidden = false;
  if (query.thumb) {
    thumb.src = query.thumb;
    thumb.alt = `query image ${query.label}`;
    thumb.hidden = false;
  } else {
    thumb.hidden = true;
    thumb.removeAttribute("src");
  }
  const parts = [`${query.kind === "text" ? "text" : query.modality} \u201c${query.label}\u201d`,
                 `\u2192 ${$("gallery").value}`];
  if (result && result.hubness) parts.push("hubness corrected");
  if (result && result.query_excluded) parts.push("(the query itself is left out)");
  $("query-text").textContent = parts.join(" ");
}

function hitButton(hit) {
  const item = document.createElement("li");
  const button = document.createElement("button");
  button.type = "button";
  button.className = "hit";
  const name = hit.payload.text || (hit.payload.source || "").split(/[\\/]/).pop() || hit.id;
  button.title = `search by this ${hit.modality}: ${name}`;
  button.setAttribute("aria-label", `${hit.rank}. ${name}, score ${hit.score.toFixed(3)}; search by it`);
  if (hit.thumbnail) {
    const img = document.createElement("img");
    img.src = hit.thumbnail;
    img.alt = "";
    img.loading = "lazy";
    button.appendChild(img);
  } else {
    const text = document.createElement("span");
    text.className = "hit-text";
    text.textContent = hit.payload.text || name;
    button.appendChild(text);
  }
  const caption = document.createElement("span");
  caption.className = "caption";
  const score = document.createElement("span");
  score.className = "score";
  score.textContent = hit.score.toFixed(3);
  const label = document.createElement("span");
  label.className = "name";
  label.textContent = name;
  caption.append(score, label);
  button.appendChild(caption);
  button.addEventListener("click", () => {
    $("text").value = "";
    runQuery({ kind: "id", value: hit.id, modality: hit.modality, label: name, thumb: hit.thumbnail }, true);
  });
  item.appendChild(button);
  return item;
}

function renderColumn(mode, result, error, single) {
  const column = document.createElement("section");
  column.className = "column";
  column.dataset.mode = mode;
  const title = document.createElement("h2");
  title.id = `column-${mode}`;
  column.setAttribute("aria-labelledby", title.id);
  title.textContent = mode;
  if (result) {
    const kind = document.createElement("span");
    kind.className = "kind";
    kind.textContent = ` \u00b7 ${result.score_kind}`;
    title.appendChild(kind);
  }
  column.appendChild(title);
  const note = document.createElement("p");
  note.className = "note muted";
  note.textContent = single ? "CLIP's own cross-modal search" : (MODE_NOTES[mode] || "a derived vector of the collection");
  column.appendChild(note);
  if (error) {
    const problem = document.createElement("p");
    problem.className = "error";
    problem.setAttribute("role", "alert");
    problem.textContent = error.message;
    column.appendChild(problem);
    return column;
  }
  const list = document.createElement("ol");
  list.className = "grid";
  result.hits.forEach((hit) => list.appendChild(hitButton(hit)));
  if (!result.hits.length) {
    const none = document.createElement("p");
    none.className = "muted";
    none.textContent = "no results";
    column.appendChild(none);
  }
  column.appendChild(list);
  return column;
}

// fromResult: the query is a result the user activated, whose button the new results replace; focus moves to
// the query heading so that keyboard users continue from there.
async function runQuery(query, fromResult) {
  state.query = query;
  const modes = modesFor(query.modality);
  say("searching\u2026");
  const answers = await Promise.all(modes.map((mode) => searchRequest(query, mode).then(
    (result) => ({ mode, result }), (error) => ({ mode, error }))));
  if (state.query !== query) return; // a newer query was started meanwhile
  const columns = $("columns");
  columns.replaceChildren(...answers.map((a) => renderColumn(a.mode, a.result, a.error, modes.length === 1)));
  columns.classList.toggle("single", modes.length === 1);
  const first = answers.find((a) => a.result);
  showQuery(query, first && first.result);
  if (fromResult) $("query-title").focus();
  const failed = answers.filter((a) => a.error);
  if (failed.length === answers.length) {
    say(failed[0].error.message, true);
  } else {
    const count = answers.reduce((n, a) => n + (a.result ? a.result.hits.length : 0), 0);
    say(`${count} results in ${modes.length} column${modes.length > 1 ? "s" : ""}`);
  }
}

function imageQuery(file) {
  if (!file) return;
  if (state.previewURL) URL.revokeObjectURL(state.previewURL);
  state.previewURL = URL.createObjectURL(file);
  runQuery({ kind: "image", file, modality: "image", label: file.name || "dropped image", thumb: state.previewURL });
}

function setUp() {
  $("search-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = $("text").value.trim();
    const file = $("image").files[0];
    if (text) runQuery({ kind: "text", value: text, modality: "text", label: text });
    else if (file) imageQuery(file);
    else say("Type a text or choose an image first.", true);
  });
  $("image").addEventListener("change", () => {
    $("text").value = "";
    imageQuery($("image").files[0]);
  });
  $("gallery").addEventListener("change", () => { if (state.query) runQuery(state.query); });
  const drop = $("drop");
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    const file = event.dataTransfer.files[0];
    if (file) { $("text").value = ""; imageQuery(file); }
  });
  loadInfo();
}

document.addEventListener("DOMContentLoaded", setUp);
