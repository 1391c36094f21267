// Review page: name unknown groups, remove faces that do not belong, see and merge people.
// Plain DOM code, no build step. Text from the server always goes through textContent (names are user input).
"use strict";

const API = "/api/v1";
const CLUSTERS_PER_PAGE = 20;
const FACES_SHOWN = 48; // thumbnails drawn per group; the label request still sends every face id
const FACE_PAGE = 500;
const MAX_FACES_LOADED = 5000;

const state = { clusterOffset: 0, people: [] };
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
  card.append(form, error);
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
    await Promise.all([loadClusters(), loadPeople()]);
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

// --- people -------------------------------------------------------------------------------------------

async function loadPeople() {
  const page = await api("GET", "/persons?limit=500");
  state.people = page.items;
  const list = $("people");
  list.replaceChildren();
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
    list.append(
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
  $("no-people").hidden = page.items.length > 0;
  fillPeopleChoices(page.items);
  $("summary").textContent = `${page.total} ${page.total === 1 ? "person" : "people"} named`;
}

function fillPeopleChoices(people) {
  const options = () => people.map((p) => el("option", { value: p.person_id }, `${p.name} (${p.face_count})`));
  $("merge-source").replaceChildren(...options());
  $("merge-target").replaceChildren(...options());
  if (people.length > 1) $("merge-target").selectedIndex = 1;
  $("people-names").replaceChildren(...people.map((p) => el("option", { value: p.name })));
}

async function showPerson(person) {
  const box = $("person-detail");
  const { faces, total } = await allFaces(person.cluster_id).catch(() => ({ faces: [], total: 0 }));
  const error = el("p", { className: "form-error", role: "alert", hidden: true });
  const list = el("ul", { className: "faces" });
  faces.slice(0, FACES_SHOWN).forEach((face, index) => {
    const reject = el("button", { type: "button", className: "small" }, "Not this person");
    reject.setAttribute("aria-label", `Face ${index + 1} is not ${person.name}`);
    reject.addEventListener("click", async () => {
      try {
        await busy(reject, () => api("POST", `/faces/${face.face_id}/reject`, { person_id: person.person_id }));
        say(`Face removed from ${person.name}.`);
        await loadPeople();
        await showPerson(person);
      } catch (err) {
        showError(error, err.message);
      }
    });
    list.append(el("li", {}, thumbnail(face, `Face ${index + 1} of ${person.name}`), reject));
  });
  box.replaceChildren(el("h3", { tabIndex: -1 }, `${person.name}: ${plural(total, "face")}`), list, error);
  box.querySelector("h3").focus();
}

async function showSuggestions(person) {
  const box = $("person-detail");
  const error = el("p", { className: "form-error", role: "alert", hidden: true });
  const heading = el("h3", { tabIndex: -1 }, `Could these be ${person.name}?`);
  box.replaceChildren(heading, error);
  heading.focus();
  let result;
  try {
    result = await api("GET", `/persons/${person.person_id}/suggestions?limit=24`);
  } catch (err) {
    showError(error, err.message);
    return;
  }
  const list = el("ul", { className: "faces" });
  result.items.forEach((item, index) => {
    const yes = el("button", { type: "button", className: "small" }, `Yes, ${person.name}`);
    yes.addEventListener("click", async () => {
      try {
        await busy(yes, () => api("POST", `/faces/${item.face.face_id}/assign`, { person_id: person.person_id }));
        yes.closest("li").remove();
        say(`Face added to ${person.name}.`);
        await Promise.all([loadPeople(), loadClusters()]);
      } catch (err) {
        showError(error, err.message);
      }
    });
    list.append(el("li", {}, thumbnail(item.face, `Suggestion ${index + 1}, similarity ${item.score.toFixed(2)}`), yes));
  });
  box.append(result.items.length ? list : el("p", {}, "No suggestions."));
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
  try {
    const result = await busy(form.querySelector("button"), () =>
      api("POST", `/persons/${source}/merge`, { into }),
    );
    say(`Merged: ${result.person.name} now has ${plural(result.person.face_count, "face")}.`);
    await loadPeople();
  } catch (err) {
    showError(error, err.message);
  }
}

// --- start --------------------------------------------------------------------------------------------

function useToken(event) {
  event.preventDefault();
  sessionStorage.setItem("faceApiToken", $("token").value);
  $("token-form").hidden = true;
  say("Token saved for this tab; try again.");
}

async function start() {
  $("merge-form").addEventListener("submit", mergePeople);
  $("token-form").addEventListener("submit", useToken);
  $("more-clusters").addEventListener("click", () => loadClusters(false).catch((e) => showError($("error"), e.message)));
  try {
    await Promise.all([loadClusters(), loadPeople()]);
    document.body.dataset.ready = "true"; // tests wait for this
  } catch (err) {
    showError($("error"), `Could not load the library: ${err.message}`);
  }
}

document.addEventListener("DOMContentLoaded", start);
