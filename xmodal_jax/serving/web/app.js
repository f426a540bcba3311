// The search page: text queries (by meaning or by caption words), image queries (drop or choose a file) and
// "more like this" (click a result's image). The last search re-runs when k, the mode or the image target change.
// Every server string reaches the DOM through textContent or an attribute, never innerHTML.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const form = $("search-form"), query = $("query"), mode = $("mode"), kInput = $("k");
  const drop = $("drop-zone"), fileInput = $("file-input"), target = $("target"), preview = $("preview");
  const status = $("status"), results = $("results"), info = $("info");
  const banner = $("warnings"), queryWarning = $("query-warning"), examples = $("examples");
  const SCORE_KINDS = {
    cosine: ["cosine", "cosine similarity of the embeddings (-1 to 1)"],
    tfidf: ["TF-IDF", "word match on the captions (TF-IDF): not on the cosine scale"],
    reranked: ["re-ranked", "the model's pairwise score of the shortlist (re-ranked): not on the cosine scale"],
  };
  const TINY_PX = 96;  // images narrower or lower than this are drawn with hard pixel edges, not blurred
  let previewUrl = null;
  let last = null;      // the last search, re-run on k / mode / target change (see request())
  let lastK = null;     // the k it asked for
  let inFlight = null;  // the AbortController of the request whose answer will be shown

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function setStatus(text, isError) {
    status.textContent = text;
    status.classList.toggle("error", Boolean(isError));
  }

  function kValue() {
    const k = parseInt(kInput.value, 10);
    return Number.isFinite(k) ? k : 12;
  }

  function safeUrl(url) {
    // Only same-origin image paths from the API: anything else is dropped.
    return typeof url === "string" && url.startsWith("/images/") ? url : null;
  }

  function pixelateIfTiny(img) {
    const tiny = img.naturalWidth > 0 && (img.naturalWidth < TINY_PX || img.naturalHeight < TINY_PX);
    img.classList.toggle("pixelated", tiny);
  }

  function setPreview(src) {
    if (previewUrl && previewUrl !== src) URL.revokeObjectURL(previewUrl);
    previewUrl = src.startsWith("blob:") ? src : null;
    preview.classList.remove("pixelated");
    preview.src = src;
    preview.hidden = false;
  }

  function scoreLabel(kind) {
    const [label, title] = SCORE_KINDS[kind] || [String(kind), ""];
    const node = el("span", "score-kind", label);
    if (title) node.title = title;
    return node;
  }

  function card(result, rank, defaultKind) {
    const node = el("li", "result");
    const url = safeUrl(result.image_url);
    if (url) {
      const more = el("button", "more-like");
      more.type = "button";
      more.title = "more like this";
      more.setAttribute("aria-label", `more like this: result ${rank}, image ${result.image_id}`);
      const img = el("img");
      img.addEventListener("load", () => pixelateIfTiny(img));
      img.src = url;
      img.alt = result.text || (result.captions && result.captions[0]) || "image " + result.image_id;
      img.loading = "lazy";
      more.appendChild(img);
      more.addEventListener("click", () => {
        setPreview(url);
        run({ kind: "similar", imageId: result.image_id, url });
      });
      node.appendChild(more);
    }
    const meta = el("div", "meta");
    const line = el("div", "score-line");
    line.append(el("span", "rank", rank), el("span", "score", Number(result.score).toFixed(3)),
                scoreLabel(result.score_kind || defaultKind));
    meta.appendChild(line);
    if (typeof result.ann_score === "number") {  // re-ranked: where the ANN stage had put it
      const shortlist = typeof result.ann_rank === "number" ? `#${result.ann_rank} ` : "";
      meta.appendChild(el("p", "ann", `shortlist ${shortlist}by cosine ${result.ann_score.toFixed(3)}`));
    }
    const lines = result.text ? [result.text] : (result.captions || []).slice(0, 2);
    for (const text of lines) meta.appendChild(el("p", "caption", text));
    node.appendChild(meta);
    node.dataset.imageId = String(result.image_id);
    return node;
  }

  function unknownWordsText(body) {
    if (typeof body.warning === "string" && body.warning) return body.warning;
    const unknown = body.unknown_words;
    if (!unknown || !(unknown.count > 0)) return "";
    if (unknown.count >= unknown.total) {
      return `${unknown.count} of ${unknown.total} words unknown: results are not meaningful`;
    }
    const words = Array.isArray(unknown.words) && unknown.words.length ? ` (${unknown.words.join(", ")})` : "";
    return `${unknown.count} of ${unknown.total} words unknown${words}: results rest on the other words`;
  }

  function show(body, label, defaultKind) {
    const items = Array.isArray(body.results) ? body.results : [];
    const kind = body.score_kind || defaultKind;
    results.replaceChildren(...items.map((result, i) => card(result, result.rank || i + 1, kind)));
    const warning = unknownWordsText(body);
    queryWarning.textContent = warning;
    queryWarning.hidden = !warning;
    const took = typeof body.took_ms === "number" ? ` in ${body.took_ms.toFixed(1)} ms` : "";
    setStatus(items.length ? `${items.length} results for ${label}${took}` : `nothing found for ${label}`);
  }

  async function call(url, options) {
    let response, body;
    try {
      response = await fetch(url, options);
      body = await response.json();
    } catch (err) {
      throw new Error("the service did not answer (" + err.message + ")");
    }
    if (!response.ok) throw new Error(body && body.error ? body.error : "HTTP " + response.status);
    return body;
  }

  function jsonPost(payload) {
    return { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(payload) };
  }

  // A search -> {url, options, label, defaultKind, busy}, reading k / mode / target now, so a re-run uses the
  // current controls. Kinds: {kind: "text", text}, {kind: "file", file}, {kind: "similar", imageId, url}.
  function request(search) {
    const k = kValue();
    if (search.kind === "text") {
      const captions = mode.value === "captions";
      return { url: captions ? "/api/search/captions" : "/api/search/text",
               options: jsonPost({ query: search.text, k }), label: "\u201c" + search.text + "\u201d",
               defaultKind: captions ? "tfidf" : "cosine", busy: "searching…" };
    }
    const params = `k=${encodeURIComponent(k)}&target=${encodeURIComponent(target.value)}`;
    if (search.kind === "file") {
      const data = new FormData();
      data.append("image", search.file, search.file.name || "image");
      return { url: `/api/search/image?${params}`, options: { method: "POST", body: data },
               label: search.file.name || "the image", defaultKind: "cosine", busy: "searching by image…" };
    }
    return { url: `/api/search/similar?image_id=${encodeURIComponent(search.imageId)}&${params}`, options: {},
             label: `more like image ${search.imageId}`, defaultKind: "cosine", busy: "searching like this image…" };
  }

  async function run(search) {
    last = search;
    lastK = kValue();
    const req = request(search);
    if (inFlight) inFlight.abort();  // a newer search replaces the one still running
    const controller = inFlight = new AbortController();
    results.setAttribute("aria-busy", "true");
    setStatus(req.busy);
    try {
      const body = await call(req.url, { ...req.options, signal: controller.signal });
      if (controller === inFlight) show(body, req.label, req.defaultKind);
    } catch (err) {
      if (controller !== inFlight) return;
      results.replaceChildren();
      queryWarning.hidden = true;
      setStatus(err.message, true);
    } finally {
      if (controller === inFlight) {
        inFlight = null;
        results.removeAttribute("aria-busy");
      }
    }
  }

  function rerun(kinds) {
    if (!last || !kinds.includes(last.kind) || kInput.value === "") return;  // "": k is being typed anew
    if (!kInput.checkValidity()) {
      setStatus(`k: ${kInput.validationMessage}`, true);
      return;
    }
    run(last.kind === "text" ? { kind: "text", text: query.value.trim() || last.text } : last);
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = query.value.trim();
    if (text) run({ kind: "text", text });
  });
  mode.addEventListener("change", () => rerun(["text"]));
  target.addEventListener("change", () => rerun(["file", "similar"]));
  function kChanged() {
    if (kValue() !== lastK) rerun(["text", "file", "similar"]);
  }
  kInput.addEventListener("change", kChanged);
  kInput.addEventListener("keydown", (event) => {
    // Enter in k re-runs the last search (an image one too) rather than submitting the text form.
    if (event.key !== "Enter" || !last) return;
    event.preventDefault();
    kChanged();
  });
  preview.addEventListener("load", () => pixelateIfTiny(preview));

  function searchFile(file) {
    if (!file) return;
    setPreview(URL.createObjectURL(file));
    run({ kind: "file", file });
  }

  fileInput.addEventListener("change", () => {
    const file = fileInput.files[0];
    fileInput.value = "";  // so that choosing the same file again is a change too
    searchFile(file);
  });
  for (const name of ["dragenter", "dragover"]) {
    drop.addEventListener(name, (event) => { event.preventDefault(); drop.classList.add("over"); });
  }
  for (const name of ["dragleave", "drop"]) {
    drop.addEventListener(name, (event) => { event.preventDefault(); drop.classList.remove("over"); });
  }
  drop.addEventListener("drop", (event) => {
    const files = event.dataTransfer && event.dataTransfer.files;
    if (files && files.length) searchFile(files[0]);
  });
  // Dropping outside the zone must not navigate away from the page.
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => event.preventDefault());

  function showWarnings(warnings) {
    const list = (Array.isArray(warnings) ? warnings : []).filter((w) => typeof w === "string" && w);
    banner.replaceChildren(...list.map((text) => el("li", null, text)));
    banner.hidden = !list.length;
  }

  function showExamples(queries) {
    const list = (Array.isArray(queries) ? queries : []).filter((q) => typeof q === "string" && q.trim());
    const buttons = list.map((text) => {
      const button = el("button", "example", text);
      button.type = "button";
      button.addEventListener("click", () => {
        query.value = text;
        run({ kind: "text", text: text.trim() });
      });
      return button;
    });
    examples.replaceChildren(...(buttons.length ? [el("span", "muted", "Try:"), ...buttons] : []));
    examples.hidden = !buttons.length;
  }

  function showHealth(health) {
    const names = { images: "images", texts: "captions" };
    const counts = Object.entries(health.counts || {}).filter(([, n]) => n)
      .map(([kind, n]) => `${n} ${names[kind] || kind}`);
    const rerank = health.rerank && health.rerank.k ? ` · re-ranks the top ${health.rerank.k}` : "";
    info.textContent = `${counts.join(", ")} · model step ${health.model_step} · ${health.dim}-d${rerank}`;
    if (health.limits) {
      kInput.max = String(health.limits.max_k);
      query.maxLength = health.limits.max_query_chars;
    }
    if (!health.caption_search) {
      mode.querySelector('option[value="captions"]').disabled = true;
    }
    if (!(health.kinds || []).includes("texts")) {
      target.querySelector('option[value="captions"]').disabled = true;
    }
    showWarnings(health.warnings);
    showExamples(health.example_queries);
  }

  setStatus("connecting to the service…");
  call("/api/health").then((health) => {
    showHealth(health);
    if (status.textContent === "connecting to the service…") setStatus("");
  }).catch((err) => setStatus(err.message, true));
})();
