// Review page: name unknown groups and faces on their own, answer suggestions, see a person's faces and photos,
// split, merge, ignore, undo. Plain DOM code, no build step. Text from the server always goes through
// textContent (names are user input). Every list is paged: the page never asks for everything at once.
"use strict";

const API = "/api/v1";
const CLUSTERS_PER_PAGE = 20;
const FACES_SHOWN = 48; // thumbnails drawn per group; the label request still sends every face id
const FACE_PAGE = 500;
const MAX_FACES_LOADED = 5000;

const SINGLES_PER_PAGE = 24;
const PEOPLE_PER_PAGE = 50;
const PERSON_FACES = 48;
const SUGGESTION_BATCH = 24;
const IGNORED_PAGE = 24;

const state = { clusterOffset: 0, people: [], peopleOffset: 0, query: "", singlesOffset: 0, ignoredOffset: 0, undoId: null };
const $ = (id) => document.getElementById(id);

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// --- talking to the API -------------------------------------------------------------------------------

async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  const token = sessionStorage.getItem("faceApiToken");
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(API + path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const data = await response.json().catch(() => null);
  if (response.ok) return data;
  if (response.status === 401) $("token-form").hidden = false;
  throw new ApiError(response.status, describeError(response.status, data));
}

function describeError(status, data) {
  const detail = data && data.detail;
  if (Array.isArray(detail)) return detail.map((d) => d.msg.replace(/^Value error, /, "")).join("; ");
  if (typeof detail === "string") return detail;
  return `the server answered ${status}`;
}

async function allFaces(clusterId) {
  const faces = [];
  let total = Infinity;
  while (faces.length < total && faces.length < MAX_FACES_LOADED) {
    const page = await api("GET", `/faces/clusters/${clusterId}?limit=${FACE_PAGE}&offset=${faces.length}`);
    total = page.faces.total;
    faces.push(...page.faces.items);
    if (page.faces.items.length === 0) break;
  }
  return { faces, total };
}

// --- small DOM helpers --------------------------------------------------------------------------------

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "dataset") Object.assign(node.dataset, value);
    else if (key in node) node[key] = value;
    else node.setAttribute(key, value);
  }
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
}

function plural(count, noun) {
  return `${count} ${count === 1 ? noun : `${noun}s`}`;
}

function say(message) {
  $("status").textContent = message;
}

function showError(target, message) {
  target.textContent = message;
  target.hidden = !message;
}

function thumbnail(face, label) {
  return el("img", { src: face.thumbnail_url, alt: label, loading: "lazy", width: 96, height: 96 });
}

async function busy(button, work) {
  button.disabled = true;
  try {
    return await work();
  } finally {
    button.disabled = false;
  }
}

// --- unknown groups -----------------------------------------------------------------------------------

async function loadClusters(reset = true) {
  if (reset) {
    state.clusterOffset = 0;
    $("clusters").replaceChildren();
  }
  const page = await api("GET", `/faces/clusters?type=unknown&limit=${CLUSTERS_PER_PAGE}&offset=${state.clusterOffset}`);
  for (const cluster of page.items) {
    $("clusters").append(await renderCluster(cluster));
  }
  state.clusterOffset += page.items.length;
  $("more-clusters").hidden = state.clusterOffset >= page.total;
  $("no-clusters").hidden = page.total > 0;
}

async function renderCluster(cluster) {
  const { faces, total } = await allFaces(cluster.cluster_id);
  const inputId = `name-${cluster.cluster_id}`;
  const error = el("p", { className: "form-error", role: "alert", hidden: true });
  const list = el("ul", { className: "faces" });
  const card = el(
    "article",
    { className: "cluster", dataset: { clusterId: cluster.cluster_id }, "aria-label": `Group of ${total} faces` },
    el("h3", {}, `${plural(total, "face")} `, el("span", { className: "meta" }, cluster.cluster_id)),
    list,
  );
  faces.slice(0, FACES_SHOWN).forEach((face, index) => {
    const remove = el("button", { type: "button", className: "small" }, "Remove from group");
    remove.setAttribute("aria-label", `Remove face ${index + 1} from this group`);
    remove.addEventListener("click", () => removeFromGroup(card, face, remove, error));
    list.append(el("li", {}, thumbnail(face, `Face ${index + 1} of ${total}`), remove));
  });
  if (total > FACES_SHOWN) card.append(el("p", { className: "meta" }, `and ${total - FACES_SHOWN} more faces`));

  const input = el("input", {
    id: inputId,
    name: "name",
    required: true,
    maxLength: 200,
    autocomplete: "off",
    placeholder: "Full name",
  });
  input.setAttribute("list", "people-names");
  const form = el(
    "form",
    { className: "name-form" },
    el("label", { htmlFor: inputId }, "Who is this?"),
    input,
    el("button", { type: "submit" }, "Save name"),
  );
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    nameCluster(card, cluster.cluster_id, faces.map((f) => f.face_id), input, form.querySelector("button"), error);
  });
  const ignore = el("button", { type: "button", className: "small ignore-group" }, "Ignore this group");
  ignore.addEventListener("click", () =>
    decide(ignore, error, () => api("POST", `/faces/clusters/${cluster.cluster_id}/ignore`, { face_ids: faces.map((f) => f.face_id) }), "Group ignored.", refreshAll),
  );
  card.append(form, ignore, error);
  return card;
}

async function nameCluster(card, clusterId, faceIds, input, button, error) {
  showError(error, "");
  const name = input.value.trim();
  if (!name) {
    showError(error, "Type a name first.");
    input.focus();
    return;
  }
  try {
    const result = await busy(button, () =>
      api("POST", `/faces/clusters/${clusterId}/label`, { name, face_ids: faceIds }),
    );
    say(`Named ${plural(result.faces_labelled, "face")} as ${result.person_name}.`);
    await Promise.all([loadClusters(), loadPeople(), loadUndo()]);
    focusFirstGroup();
  } catch (err) {
    if (err.status === 409) {
      // The group changed under us (a clustering run, another reviewer): show its current faces.
      const fresh = await refreshCluster(card, clusterId);
      const message = "This group changed since the page loaded and has been reloaded; check it and save again.";
      if (fresh) {
        showError(fresh.querySelector(".form-error"), message);
        fresh.querySelector("input").value = name;
        fresh.querySelector("input").focus();
      } else {
        showError($("error"), message);
      }
    } else {
      showError(error, err.message);
      input.focus();
    }
  }
}

async function removeFromGroup(card, face, button, error) {
  showError(error, "");
  try {
    await busy(button, () => api("POST", `/faces/${face.face_id}/remove-from-cluster`, {}));
    say("Face removed from the group.");
    await Promise.all([loadUndo(), loadSingletons()]);
    const fresh = await refreshCluster(card, card.dataset.clusterId);
    const next = fresh && (fresh.querySelector(".faces button") || fresh.querySelector("input"));
    if (next) next.focus();
    else focusFirstGroup();
  } catch (err) {
    showError(error, err.message);
  }
}

// Redraw one group in place; returns the new card, or null when the group is gone.
async function refreshCluster(card, clusterId) {
  try {
    const detail = await api("GET", `/faces/clusters/${clusterId}?limit=1`);
    if (detail.type !== "unknown") throw new ApiError(404, "named");
    const fresh = await renderCluster(detail);
    card.replaceWith(fresh);
    return fresh;
  } catch (err) {
    if (err.status !== 404) throw err;
    card.remove();
    return null;
  }
}

function focusFirstGroup() {
  const input = document.querySelector("#clusters input");
  if (input) input.focus();
}

// --- shared decision helper ---------------------------------------------------------------------------

// Run one write, say what happened, refresh what it changed and the undo bar; errors show inline.
async function decide(button, error, write, message, after) {
  showError(error, "");
  try {
    const result = await busy(button, write);
    say(typeof message === "function" ? message(result) : message);
    await Promise.all([after ? after(result) : null, loadUndo()]);
    return result;
  } catch (err) {
    showError(error, err.message);
    return null;
  }
}

async function refreshAll() {
  await Promise.all([loadClusters(), loadPeople(), loadSingletons(), loadIgnored()]);
}

// --- faces on their own -------------------------------------------------------------------------------

async function loadSingletons() {
  const page = await api("GET", `/faces/singletons?limit=${SINGLES_PER_PAGE}&offset=${state.singlesOffset}`);
  if (page.items.length === 0 && state.singlesOffset > 0 && page.total > 0) {
    state.singlesOffset = Math.max(0, state.singlesOffset - SINGLES_PER_PAGE);
    return loadSingletons();
  }
  const list = $("singletons");
  list.replaceChildren(...page.items.map((item, index) => renderSingleton(item, state.singlesOffset + index + 1)));
  $("no-singletons").hidden = page.total > 0;
  const last = Math.min(page.total, state.singlesOffset + page.items.length);
  $("singles-page").textContent = page.total ? `${state.singlesOffset + 1}-${last} of ${page.total}` : "";
  $("singles-prev").disabled = state.singlesOffset === 0;
  $("singles-next").disabled = last >= page.total;
  return page;
}

async function pageSingles(step) {
  state.singlesOffset = Math.max(0, state.singlesOffset + step * SINGLES_PER_PAGE);
  await loadSingletons();
}

function renderSingleton(item, number) {
  const face = item.face;
  const error = el("p", { className: "form-error", role: "alert", hidden: true });
  const guess = item.guess
    ? el("p", { className: "guess" }, `Could be ${item.guess.person_name} `, el("span", { className: "score" }, item.guess.score.toFixed(2)))
    : el("p", { className: "guess" }, "New person", item.best_score === null ? "" : el("span", { className: "meta" }, ` (nearest ${item.best_score.toFixed(2)})`));
  const card = el("li", { dataset: { faceId: face.face_id } }, thumbnail(face, `Face on its own ${number}`), guess);
  if (item.guess) {
    const yes = el("button", { type: "button", className: "small" }, `Yes, ${item.guess.person_name}`);
    yes.addEventListener("click", () =>
      decide(yes, error, () => api("POST", `/faces/${face.face_id}/assign`, { person_id: item.guess.person_id }),
        `Face named ${item.guess.person_name}.`, () => Promise.all([loadSingletons(), loadPeople()])),
    );
    card.append(yes);
  }
  const inputId = `single-name-${face.face_id}`;
  const input = el("input", { id: inputId, name: "name", required: true, maxLength: 200, autocomplete: "off", placeholder: "Name" });
  input.setAttribute("list", "people-names");
  const save = el("button", { type: "submit", className: "small" }, "Save");
  const form = el("form", {}, el("label", { htmlFor: inputId, className: "meta" }, "Who?"), input, save);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const name = input.value.trim();
    if (!name) return showError(error, "Type a name first.");
    decide(save, error, () => api("POST", `/faces/${face.face_id}/assign`, { name }), (r) => `Face named ${r.person_name}.`,
      () => Promise.all([loadSingletons(), loadPeople()]));
  });
  const ignore = el("button", { type: "button", className: "small" }, "Ignore");
  ignore.setAttribute("aria-label", `Ignore face ${face.face_id}`);
  ignore.addEventListener("click", () =>
    decide(ignore, error, () => api("POST", `/faces/${face.face_id}/ignore`), "Face ignored.", () => Promise.all([loadSingletons(), loadIgnored()])),
  );
  card.append(form, ignore, error);
  return card;
}

// --- ignored ------------------------------------------------------------------------------------------

async function loadIgnored(reset = true) {
  if (reset) {
    state.ignoredOffset = 0;
    $("ignored").replaceChildren();
  }
  const page = await api("GET", `/faces/ignored?limit=${IGNORED_PAGE}&offset=${state.ignoredOffset}`);
  for (const face of page.items) {
    const back = el("button", { type: "button", className: "small" }, "Stop ignoring");
    const error = el("p", { className: "form-error", role: "alert", hidden: true });
    back.addEventListener("click", () =>
      decide(back, error, () => api("POST", `/faces/${face.face_id}/unignore`), "Face no longer ignored.", () => Promise.all([loadIgnored(), loadSingletons()])),
    );
    $("ignored").append(el("li", { dataset: { faceId: face.face_id } }, thumbnail(face, `Ignored face ${face.face_id}`), back, error));
  }
  state.ignoredOffset += page.items.length;
  $("more-ignored").hidden = state.ignoredOffset >= page.total;
  $("no-ignored").hidden = page.total > 0;
}

// --- undo ---------------------------------------------------------------------------------------------

async function loadUndo() {
  const page = await api("GET", "/decisions?limit=10");
  const next = page.items.find((d) => !d.undone);
  state.undoId = next ? next.decision_id : null;
  $("undo").disabled = !next;
  $("last-decision").textContent = next ? `Last: ${next.summary}` : "No decision to undo.";
}

async function undoLast() {
  if (state.undoId === null) return;
  try {
    const result = await busy($("undo"), () => api("POST", "/decisions/undo", { decision_id: state.undoId }));
    say(`Undone: ${result.undone.summary}.`);
  } catch (err) {
    showError($("error"), err.message);
  }
  await Promise.all([refreshAll(), loadUndo()]);
  $("person-detail").replaceChildren();
}

// --- people -------------------------------------------------------------------------------------------

async function loadPeople(reset = true) {
  if (reset) {
    state.peopleOffset = 0;
    state.people = [];
    $("people").replaceChildren();
  }
  const q = state.query ? `&q=${encodeURIComponent(state.query)}` : "";
  const page = await api("GET", `/persons?limit=${PEOPLE_PER_PAGE}&offset=${state.peopleOffset}${q}`);
  state.people.push(...page.items);
  for (const person of page.items) {
    const show = el("button", { type: "button", className: "small" }, "Faces");
    show.setAttribute("aria-label", `Show the faces of ${person.name}`);
    show.addEventListener("click", () => showPerson(person));
    const suggest = el("button", { type: "button", className: "small" }, "Suggestions");
    suggest.setAttribute("aria-label", `Faces that may be ${person.name}`);
    suggest.addEventListener("click", () => showSuggestions(person));
    const cover = person.cover_thumbnail_url
      ? el("img", { src: person.cover_thumbnail_url, alt: "", width: 40, height: 40 })
      : null;
    $("people").append(
      el(
        "li",
        { dataset: { personId: person.person_id } },
        cover,
        el("span", { className: "name" }, person.name),
        el("span", { className: "count" }, plural(person.face_count, "face")),
        show,
        suggest,
      ),
    );
  }
  state.peopleOffset += page.items.length;
  $("more-people").hidden = state.peopleOffset >= page.total;
  $("no-people").hidden = page.total > 0 || Boolean(state.query);
  fillPeopleChoices(state.people);
  if (!state.query) $("summary").textContent = `${page.total} ${page.total === 1 ? "person" : "people"} named`;
}

function fillPeopleChoices(people) {
  const options = () => people.map((p) => el("option", { value: p.person_id }, `${p.name} (${p.face_count})`));
  $("merge-source").replaceChildren(...options());
  $("merge-target").replaceChildren(...options());
  if (people.length > 1) $("merge-target").selectedIndex = 1;
  $("people-names").replaceChildren(...people.map((p) => el("option", { value: p.name })));
}

async function reloadPerson(person, offset = 0) {
  const fresh = await api("GET", `/persons/${person.person_id}`).catch(() => null);
  await loadPeople();
  if (fresh && fresh.face_count > 0) await showPerson(fresh, offset);
  else $("person-detail").replaceChildren(el("p", {}, `${person.name} has no faces left.`));
}

// A person's page: rename, their faces (select to split off; remove; someone else), the photos they come from.
async function showPerson(person, offset = 0) {
  const box = $("person-detail");
  const page = await api("GET", `/faces/clusters/${person.cluster_id}?limit=${PERSON_FACES}&offset=${offset}`).catch(() => null);
  const faces = page ? page.faces.items : [];
  const total = page ? page.faces.total : 0;
  const error = el("p", { className: "form-error", role: "alert", hidden: true });
  const picked = new Set();

  const renameInput = el("input", { id: "rename-input", value: person.name, maxLength: 200, required: true, autocomplete: "off" });
  const rename = el("form", { className: "row", id: "rename-form" }, el("label", { htmlFor: "rename-input" }, "Name"), renameInput,
    el("button", { type: "submit", className: "small" }, "Rename"));
  rename.addEventListener("submit", (event) => {
    event.preventDefault();
    decide(rename.querySelector("button"), error, () => api("PATCH", `/persons/${person.person_id}`, { name: renameInput.value.trim() }),
      (r) => `Renamed to ${r.name}.`, (r) => reloadPerson(r, offset));
  });

  const list = el("ul", { className: "faces", id: "person-faces" });
  faces.forEach((face, index) => {
    const number = offset + index + 1;
    const check = el("input", { type: "checkbox", id: `pick-${face.face_id}` });
    check.setAttribute("aria-label", `Select face ${number}`);
    const item = el("li", { dataset: { faceId: face.face_id } });
    check.addEventListener("change", () => {
      if (check.checked) picked.add(face.face_id);
      else picked.delete(face.face_id);
      item.classList.toggle("picked", check.checked);
      splitButton.textContent = `Split ${plural(picked.size, "face")} into a new person`;
    });
    const remove = el("button", { type: "button", className: "small" }, "Remove");
    remove.setAttribute("aria-label", `Remove face ${number} from ${person.name}`);
    remove.addEventListener("click", () =>
      decide(remove, error, () => api("POST", `/faces/${face.face_id}/unassign`), `Face removed from ${person.name}.`, () => Promise.all([reloadPerson(person, offset), loadSingletons()])),
    );
    const reject = el("button", { type: "button", className: "small" }, "Not this person");
    reject.setAttribute("aria-label", `Face ${number} is not ${person.name}`);
    reject.addEventListener("click", () =>
      decide(reject, error, () => api("POST", `/faces/${face.face_id}/reject`, { person_id: person.person_id }), `Face removed from ${person.name}.`, () => Promise.all([reloadPerson(person, offset), loadSingletons()])),
    );
    const other = el("button", { type: "button", className: "small" }, "Someone else…");
    other.setAttribute("aria-label", `Face ${number} is someone else`);
    other.addEventListener("click", () => {
      const input = el("input", { maxLength: 200, placeholder: "Who is it?", autocomplete: "off", id: `other-${face.face_id}` });
      input.setAttribute("list", "people-names");
      input.setAttribute("aria-label", `Who face ${number} is`);
      const form = el("form", {}, input, el("button", { type: "submit", className: "small" }, "Move"));
      form.addEventListener("submit", (event) => {
        event.preventDefault();
        const name = input.value.trim();
        decide(form.querySelector("button"), error, () => api("POST", `/faces/${face.face_id}/someone-else`, name ? { name } : {}),
          name ? `Face moved to ${name}.` : `Face is not ${person.name}.`, () => reloadPerson(person, offset));
      });
      other.replaceWith(form);
      input.focus();
    });
    item.append(thumbnail(face, `Face ${number} of ${person.name}`), check, remove, reject, other);
    list.append(item);
  });

  const splitInput = el("input", { id: "split-name", maxLength: 200, placeholder: "New person's name", autocomplete: "off" });
  const splitButton = el("button", { type: "submit", className: "small" }, "Split 0 faces into a new person");
  const split = el("form", { className: "row", id: "split-form" }, el("label", { htmlFor: "split-name" }, "Selected faces are"), splitInput, splitButton);
  split.addEventListener("submit", (event) => {
    event.preventDefault();
    if (!picked.size) return showError(error, "Select faces first.");
    if (!splitInput.value.trim()) return showError(error, "Type the other person's name.");
    decide(splitButton, error, () => api("POST", `/persons/${person.person_id}/split`, { face_ids: [...picked], name: splitInput.value.trim() }),
      (r) => `${plural(r.faces_labelled, "face")} moved to ${r.person_name}.`, () => reloadPerson(person, offset));
  });

  const pager = el("nav", { className: "pager" });
  if (offset > 0) {
    const prev = el("button", { type: "button", className: "small" }, "Previous faces");
    prev.addEventListener("click", () => showPerson(person, Math.max(0, offset - PERSON_FACES)));
    pager.append(prev);
  }
  if (offset + faces.length < total) {
    const next = el("button", { type: "button", className: "small" }, "More faces");
    next.addEventListener("click", () => showPerson(person, offset + PERSON_FACES));
    pager.append(next);
  }

  box.replaceChildren(
    el("h3", { tabIndex: -1 }, `${person.name}: ${plural(total, "face")}`),
    rename, list, pager, split, error,
    el("h4", {}, "Photos"),
    renderPhotos(faces),
  );
  box.querySelector("h3").focus();
}

// The whole photos the faces come from, each face's box drawn over its photo (one figure per photo).
function renderPhotos(faces) {
  const byPhoto = new Map();
  for (const face of faces) {
    if (!byPhoto.has(face.image_id)) byPhoto.set(face.image_id, []);
    byPhoto.get(face.image_id).push(face);
  }
  const list = el("ul", { className: "photos", id: "person-photos" });
  for (const [imageId, shown] of byPhoto) {
    const img = el("img", { src: shown[0].photo_url, alt: `Photo ${imageId}`, loading: "lazy" });
    const figure = el("figure", { className: "photo", dataset: { imageId } }, img);
    for (const face of shown) {
      if (!face.photo_width || !face.photo_height) continue;
      const box = el("div", { className: "box", dataset: { faceId: face.face_id }, title: `Face ${face.face_id}` });
      box.style.left = `${(100 * face.bbox.x) / face.photo_width}%`;
      box.style.top = `${(100 * face.bbox.y) / face.photo_height}%`;
      box.style.width = `${(100 * face.bbox.w) / face.photo_width}%`;
      box.style.height = `${(100 * face.bbox.h) / face.photo_height}%`;
      figure.append(box);
    }
    list.append(el("li", {}, figure));
  }
  return list;
}

// --- suggestions --------------------------------------------------------------------------------------

async function showSuggestions(person) {
  const box = $("person-detail");
  const error = el("p", { className: "form-error", role: "alert", hidden: true });
  const heading = el("h3", { tabIndex: -1 }, `Could these be ${person.name}?`);
  box.replaceChildren(heading, error);
  heading.focus();
  let result;
  try {
    result = await api("GET", `/persons/${person.person_id}/suggestions?limit=${SUGGESTION_BATCH}`);
  } catch (err) {
    showError(error, err.message);
    return;
  }
  const floorText = result.floor === null ? "" : `Only faces scoring at least ${result.floor.toFixed(2)} (this space's threshold) are offered. `;
  const info = el("p", { className: "hint", id: "suggestion-info" }, `${floorText}${plural(result.total, "face")} in all, best first.`);
  const list = el("ul", { className: "cards", id: "suggestions" });
  const cutInput = el("input", { id: "accept-cut", type: "number", step: "0.01", min: String(result.floor ?? -1), max: "1" });
  const top = result.items.length ? result.items[0].score : 0;
  cutInput.value = Math.max(result.floor ?? 0, Math.min(top, 0.6)).toFixed(2);
  const acceptButton = el("button", { type: "submit", className: "small", id: "accept-all" }, "");
  const accept = el("form", { className: "row", id: "accept-form" }, el("label", { htmlFor: "accept-cut" }, "Accept all shown above"), cutInput, acceptButton);
  const above = () => result.items.filter((s) => s.score >= Number(cutInput.value) && !s.decided);
  const count = () => {
    acceptButton.textContent = `Accept ${plural(above().length, "face")}`;
    acceptButton.disabled = above().length === 0;
  };
  cutInput.addEventListener("input", count);
  const afterDecision = async () => {
    if (result.items.every((s) => s.decided)) await showSuggestions(person); // the next batch
    else count();
    await loadPeople();
  };
  accept.addEventListener("submit", (event) => {
    event.preventDefault();
    const ids = above().map((s) => s.face.face_id);
    decide(acceptButton, error, () => api("POST", `/persons/${person.person_id}/suggestions/accept`, { face_ids: ids, min_score: Number(cutInput.value) }),
      (r) => `${plural(r.accepted.length, "face")} added to ${person.name}.`, () => showSuggestions(person).then(loadPeople));
  });
  result.items.forEach((item, index) => {
    const card = el("li", { dataset: { faceId: item.face.face_id } },
      thumbnail(item.face, `Suggestion ${index + 1}, score ${item.score.toFixed(2)}`),
      el("span", { className: "score" }, item.score.toFixed(2)));
    const yes = el("button", { type: "button", className: "small" }, `Yes, ${person.name}`);
    const no = el("button", { type: "button", className: "small" }, "No");
    no.setAttribute("aria-label", `Suggestion ${index + 1} is not ${person.name}`);
    const settle = () => { item.decided = true; card.remove(); return afterDecision(); };
    yes.addEventListener("click", () =>
      decide(yes, error, () => api("POST", `/faces/${item.face.face_id}/assign`, { person_id: person.person_id }), `Face added to ${person.name}.`, settle),
    );
    no.addEventListener("click", () =>
      decide(no, error, () => api("POST", `/faces/${item.face.face_id}/reject`, { person_id: person.person_id }), `Noted: not ${person.name}.`, settle),
    );
    card.append(el("div", { className: "row" }, yes, no));
    list.append(card);
  });
  count();
  box.append(info, result.items.length ? accept : "", result.items.length ? list : el("p", {}, "No suggestions above the threshold."));
}

async function mergePeople(event) {
  event.preventDefault();
  const form = event.currentTarget;
  const error = form.querySelector(".form-error");
  showError(error, "");
  const source = $("merge-source").value;
  const into = $("merge-target").value;
  if (!source || !into || source === into) {
    showError(error, "Choose two different people.");
    return;
  }
  await decide(form.querySelector("button"), error, () => api("POST", `/persons/${source}/merge`, { into }),
    (r) => `Merged: ${r.person.name} now has ${plural(r.person.face_count, "face")}.`, () => loadPeople());
}

// --- start --------------------------------------------------------------------------------------------

function useToken(event) {
  event.preventDefault();
  sessionStorage.setItem("faceApiToken", $("token").value);
  $("token-form").hidden = true;
  say("Token saved for this tab; try again.");
}

async function start() {
  const report = (e) => showError($("error"), e.message);
  $("merge-form").addEventListener("submit", mergePeople);
  $("token-form").addEventListener("submit", useToken);
  $("more-clusters").addEventListener("click", () => loadClusters(false).catch(report));
  $("more-people").addEventListener("click", () => loadPeople(false).catch(report));
  $("more-ignored").addEventListener("click", () => loadIgnored(false).catch(report));
  $("singles-prev").addEventListener("click", () => pageSingles(-1).catch(report));
  $("singles-next").addEventListener("click", () => pageSingles(1).catch(report));
  $("undo").addEventListener("click", () => undoLast().catch(report));
  let typing = null;
  $("people-search").addEventListener("input", () => {
    clearTimeout(typing);
    typing = setTimeout(() => {
      state.query = $("people-search").value.trim();
      loadPeople().catch(report);
    }, 200);
  });
  try {
    await Promise.all([loadClusters(), loadPeople(), loadSingletons(), loadIgnored(), loadUndo()]);
    document.body.dataset.ready = "true"; // tests wait for this
  } catch (err) {
    showError($("error"), `Could not load the library: ${err.message}`);
  }
}

document.addEventListener("DOMContentLoaded", start);
