// The search page: text queries (by meaning or by caption words) and image queries (drop or choose a file).
// Every server string reaches the DOM through textContent or an attribute, never innerHTML.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const form = $("search-form"), query = $("query"), mode = $("mode"), kInput = $("k");
  const drop = $("drop-zone"), fileInput = $("file-input"), target = $("target"), preview = $("preview");
  const status = $("status"), results = $("results"), info = $("info");
  let previewUrl = null;

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

  function card(result) {
    const node = el("article", "result");
    const url = safeUrl(result.image_url);
    if (url) {
      const img = el("img");
      img.src = url;
      img.alt = result.text || (result.captions && result.captions[0]) || "image " + result.image_id;
      img.loading = "lazy";
      node.appendChild(img);
    }
    const meta = el("div", "meta");
    meta.appendChild(el("span", "score", Number(result.score).toFixed(3)));
    const lines = result.text ? [result.text] : (result.captions || []).slice(0, 2);
    for (const line of lines) meta.appendChild(el("p", "caption", line));
    node.appendChild(meta);
    node.dataset.imageId = String(result.image_id);
    return node;
  }

  function show(body, label) {
    results.replaceChildren(...body.results.map(card));
    const took = typeof body.took_ms === "number" ? ` in ${body.took_ms.toFixed(1)} ms` : "";
    const n = body.results.length;
    setStatus(n ? `${n} results for ${label}${took}` : `nothing found for ${label}`);
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

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const text = query.value.trim();
    if (!text) return;
    const endpoint = mode.value === "captions" ? "/api/search/captions" : "/api/search/text";
    setStatus("searching…");
    try {
      const body = await call(endpoint, {
        method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ query: text, k: kValue() }),
      });
      show(body, "\u201c" + text + "\u201d");
    } catch (err) {
      results.replaceChildren();
      setStatus(err.message, true);
    }
  });

  async function searchImage(file) {
    if (!file) return;
    if (previewUrl) URL.revokeObjectURL(previewUrl);
    previewUrl = URL.createObjectURL(file);
    preview.src = previewUrl;
    preview.hidden = false;
    const data = new FormData();
    data.append("image", file, file.name || "image");
    setStatus("searching by image…");
    try {
      const url = `/api/search/image?k=${encodeURIComponent(kValue())}&target=${encodeURIComponent(target.value)}`;
      const body = await call(url, { method: "POST", body: data });
      show(body, file.name || "the image");
    } catch (err) {
      results.replaceChildren();
      setStatus(err.message, true);
    }
  }

  fileInput.addEventListener("change", () => searchImage(fileInput.files[0]));
  for (const name of ["dragenter", "dragover"]) {
    drop.addEventListener(name, (event) => { event.preventDefault(); drop.classList.add("over"); });
  }
  for (const name of ["dragleave", "drop"]) {
    drop.addEventListener(name, (event) => { event.preventDefault(); drop.classList.remove("over"); });
  }
  drop.addEventListener("drop", (event) => {
    const files = event.dataTransfer && event.dataTransfer.files;
    if (files && files.length) searchImage(files[0]);
  });
  // Dropping outside the zone must not navigate away from the page.
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => event.preventDefault());

  call("/api/health").then((health) => {
    const names = { images: "images", texts: "captions" };
    const counts = Object.entries(health.counts || {}).filter(([, n]) => n)
      .map(([kind, n]) => `${n} ${names[kind] || kind}`);
    info.textContent = `${counts.join(", ")} · model step ${health.model_step} · ${health.dim}-d`;
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
  }).catch((err) => setStatus(err.message, true));
})();
