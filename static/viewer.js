/* tileserver web viewer: pick a product, an image and how to render it; show our own tiles.
 * Or search the catalog (dates, cloud cover, a box drawn on the map) and show the mosaic
 * of the matching images.
 *
 * Plain browser JavaScript, no build step. Talks to the JSON API of the server that served
 * the page (under the `data-root` prefix) and to nothing else.
 */
(() => {
  "use strict";

  const ROOT = document.body.dataset.root || "";
  const INITIAL_IMAGE = document.body.dataset.imageId || "";
  const INITIAL_SEARCH = document.body.dataset.searchId || "";
  // an /images/{id}/map or /searches/{id}/map page: the address bar follows what is shown
  const ON_MAP_PAGE = Boolean(INITIAL_IMAGE || INITIAL_SEARCH) && /\/map$/.test(location.pathname);
  const PAGE_SIZE = 200;
  const SEARCH_LIMIT = 100; // images listed per search
  const BOX_DIGITS = 1e6;   // box corners are rounded to 6 decimals of a degree (~0.1 m)
  const $ = (id) => document.getElementById(id);

  const ui = {
    form: $("controls"),
    searchPanel: $("search-panel"),
    product: $("product"),
    image: $("image"),
    moreImages: $("more-images"),
    imageInfo: $("image-info"),
    searchStart: $("search-start"),
    searchEnd: $("search-end"),
    searchCloud: $("search-cloud"),
    boxInfo: $("box-info"),
    drawBox: $("draw-box"),
    clearBox: $("clear-box"),
    search: $("search"),
    searchCount: $("search-count"),
    searchResults: $("search-results"),
    searchInfo: $("search-info"),
    pixelSelection: $("pixel-selection"),
    bandR: $("band-r"),
    bandG: $("band-g"),
    bandB: $("band-b"),
    bandRLabel: $("band-r-label"),
    expression: $("expression"),
    colormap: $("colormap"),
    scaling: $("scaling"),
    customScaling: $("custom-scaling"),
    customScalingGroup: $("custom-scaling-group"),
    apply: $("apply"),
    opacity: $("opacity"),
    opacityValue: $("opacity-value"),
    xyzUrl: $("xyz-url"),
    copyUrl: $("copy-url"),
    wmtsLink: $("wmts-link"),
    status: $("status"),
  };

  const state = {
    products: [],
    product: null,     // the selected product record
    images: new Map(), // id -> image record of the selected product
    nextToken: null,
    view: INITIAL_SEARCH ? "search" : "image", // what the map shows: an image or a mosaic
    layer: null,       // the tile layer on the map
    footprint: null,   // the selected image's outline
    shown: null,       // the source (image:<id> or search:<id>) the map was last fitted to
    generation: 0,     // bumps on every apply; stale answers are dropped
    search: null,      // the registered search shown in the search view: {id, links, matched}
    searching: 0,      // bumps on every search; stale answers are dropped
    box: null,         // the search box as [west, south, east, north]
    boxLayer: null,    // the search box on the map
    highlight: null,   // the outline of the result under the pointer
  };

  // ---------------------------------------------------------------- helpers

  function setStatus(message, kind = "info") {
    ui.status.textContent = message;
    ui.status.dataset.state = kind;
  }

  // a key given in the page's address (?api_key=) goes on every request the page makes
  const API_KEY = new URLSearchParams(location.search).get("api_key");

  function apiUrl(path) {
    const url = `${ROOT}${path}`;
    if (!API_KEY) return url;
    return `${url}${url.includes("?") ? "&" : "?"}api_key=${encodeURIComponent(API_KEY)}`;
  }

  /** An image id in a path: encoded, but keeping its readable colon. */
  function idPath(id) {
    return encodeURIComponent(id).replace(/%3A/gi, ":");
  }

  /** The `detail` of an error answer, or its status line. */
  async function errorText(response) {
    let detail = "";
    try {
      const body = await response.json();
      detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
    } catch {
      detail = response.statusText;
    }
    return `${response.status}${detail ? `: ${detail}` : ""}`;
  }

  async function getJSON(path, init = {}) {
    const headers = { Accept: "application/json", ...init.headers };
    const response = await fetch(apiUrl(path), { ...init, headers });
    if (!response.ok) throw new Error(await errorText(response));
    return response.json();
  }

  function postJSON(path, body) {
    return getJSON(path, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
  }

  function option(value, text) {
    const el = document.createElement("option");
    el.value = value;
    el.textContent = text;
    return el;
  }

  function formatDate(iso) {
    if (!iso) return "undated";
    const date = new Date(iso);
    if (Number.isNaN(date.getTime())) return iso;
    return `${date.toISOString().slice(0, 16).replace("T", " ")} UTC`;
  }

  function formatCloud(cover) {
    if (cover === null || cover === undefined) return "cloud n/a";
    return `cloud ${Math.round(cover)}%`;
  }

  function imageLabel(image) {
    return `${formatDate(image.acquired)} · ${formatCloud(image.cloud_cover)}`;
  }

  /** The UTC day (YYYY-MM-DD) of an RFC 3339 time. */
  function formatDay(iso) {
    if (!iso) return "undated";
    const date = new Date(iso);
    return Number.isNaN(date.getTime()) ? iso.slice(0, 10) : date.toISOString().slice(0, 10);
  }

  function plural(count, noun) {
    return `${count} ${noun}${count === 1 ? "" : "s"}`;
  }

  // ---------------------------------------------------------------- map

  const map = L.map("map", { zoomControl: true, worldCopyJump: true }).setView([20, 0], 2);
  map.attributionControl.setPrefix(
    '<a href="https://leafletjs.com" title="A JavaScript library for interactive maps">Leaflet</a>'
  );
  L.control.scale({ imperial: false }).addTo(map);

  // ---------------------------------------------------------------- products and images

  async function loadProducts() {
    const { products } = await getJSON("/products");
    state.products = products;
    ui.product.replaceChildren(...products.map((p) => option(p.id, p.name || p.id)));
    ui.product.disabled = products.length === 0;
    if (products.length === 0) {
      ui.product.replaceChildren(option("", "no products"));
      ui.image.replaceChildren(option("", "no images"));
      setStatus("The catalog has no products yet.", "error");
      return false;
    }
    return true;
  }

  function selectProduct(productId) {
    state.product = state.products.find((p) => p.id === productId) || state.products[0];
    ui.product.value = state.product.id;
    fillBands(state.product);
  }

  async function loadImages({ append = false } = {}) {
    const product = state.product;
    const query = new URLSearchParams({ limit: String(PAGE_SIZE) });
    if (append && state.nextToken) query.set("token", state.nextToken);
    const page = await getJSON(`/products/${encodeURIComponent(product.id)}/images?${query}`);
    if (product !== state.product) return; // the user switched products meanwhile
    if (!append) {
      state.images.clear();
      ui.image.replaceChildren();
    }
    for (const image of page.images) {
      if (state.images.has(image.id)) continue;
      state.images.set(image.id, image);
      ui.image.append(option(image.id, imageLabel(image)));
    }
    state.nextToken = page.next_token || null;
    ui.moreImages.hidden = !state.nextToken;
    ui.image.disabled = state.images.size === 0;
    if (state.images.size === 0) ui.image.replaceChildren(option("", "no images"));
  }

  /** Make sure an image (perhaps older than the loaded pages) is in the picker. */
  function addImage(image) {
    if (state.images.has(image.id)) return;
    state.images.set(image.id, image);
    ui.image.append(option(image.id, imageLabel(image)));
    ui.image.disabled = false;
  }

  function describeImage(image) {
    if (!image) {
      ui.imageInfo.textContent = "";
      return;
    }
    ui.imageInfo.textContent = image.name || image.id;
    ui.imageInfo.title = image.id;
  }

  // ---------------------------------------------------------------- bands and modes

  function fillBands(product) {
    const names = (product.bands || []).filter((b) => !b.is_alpha).map((b) => b.name);
    for (const select of [ui.bandR, ui.bandG, ui.bandB]) {
      select.replaceChildren(...names.map((n) => option(n, n)));
    }
    const defaults = (product.default_bands || []).filter((n) => names.includes(n));
    const first = names[0] || "";
    if (defaults.length >= 3) {
      [ui.bandR.value, ui.bandG.value, ui.bandB.value] = defaults;
      setMode("rgb");
    } else {
      // no RGB default: one band (the default one, else the first) in single-band mode
      ui.bandR.value = defaults[0] || first;
      ui.bandG.value = names[1] || first;
      ui.bandB.value = names[2] || first;
      setMode("single");
    }
  }

  function mode() {
    return ui.form.querySelector('input[name="mode"]:checked').value;
  }

  function setMode(value) {
    const radio = ui.form.querySelector(`input[name="mode"][value="${value}"]`);
    radio.checked = true;
    showMode();
  }

  function showMode() {
    const current = mode();
    ui.form.classList.remove("mode-rgb", "mode-single", "mode-expression");
    ui.form.classList.add(`mode-${current}`);
    ui.bandRLabel.textContent = current === "single" ? "Band" : "Red";
    if (current === "expression") {
      if (!ui.expression.value.trim()) ui.expression.value = suggestExpression();
      if (!ui.colormap.value) ui.colormap.value = "rdylgn";
    }
  }

  /** NDVI when the product has red and near-infrared bands named like Sentinel-2's. */
  function suggestExpression() {
    const names = new Set((state.product?.bands || []).map((b) => b.name));
    if (names.has("B08") && names.has("B04")) return "(B08-B04)/(B08+B04)";
    const [a, b] = [...names];
    return a && b ? `(${b}-${a})/(${b}+${a})` : a || "";
  }

  // ---------------------------------------------------------------- render parameters

  /** The query parameters of the current rendering choices, in a stable order. */
  function renderParams({ mosaic = false } = {}) {
    const params = new URLSearchParams();
    const current = mode();
    if (current === "expression") {
      params.set("expression", ui.expression.value.trim());
    } else if (current === "single") {
      params.set("bands", ui.bandR.value);
    } else {
      params.set("bands", [ui.bandR.value, ui.bandG.value, ui.bandB.value].join(","));
    }
    if (current !== "rgb" && ui.colormap.value) params.set("colormap_name", ui.colormap.value);
    const scaling = ui.scaling.value === "custom" ? ui.customScaling.value.trim()
      : ui.scaling.value;
    if (scaling) params.set("scaling", scaling);
    if (mosaic) params.set("pixel_selection", ui.pixelSelection.value);
    return params;
  }

  function validate() {
    if (mode() === "expression" && !ui.expression.value.trim()) {
      return "Type an expression, e.g. (B08-B04)/(B08+B04).";
    }
    if (ui.scaling.value === "custom" && !ui.customScaling.value.trim()) {
      return "Type a scaling range as lo,hi, e.g. 0,3000.";
    }
    return null;
  }

  // ---------------------------------------------------------------- tile layer

  /** What the map shows in the current view: an image, a registered search, or nothing. */
  function currentSource() {
    if (state.view === "search") {
      if (!state.search) return null;
      const id = state.search.id;
      return { kind: "search", id, key: `search:${id}`,
        path: `/searches/${encodeURIComponent(id)}` };
    }
    const id = ui.image.value;
    if (!id) return null;
    return { kind: "image", id, key: `image:${id}`, path: `/images/${idPath(id)}` };
  }

  async function apply() {
    const source = currentSource();
    if (!source) return;
    const problem = validate();
    if (problem) {
      setStatus(problem, "error");
      return;
    }
    const generation = ++state.generation;
    const params = renderParams({ mosaic: source.kind === "search" });
    followAddress(source);
    setStatus("Loading tiles…", "loading");
    let tilejson;
    try {
      tilejson = await getJSON(`${source.path}/tilejson.json?${params}`);
    } catch (err) {
      if (generation === state.generation) setStatus(`Cannot render: ${err.message}`, "error");
      return;
    }
    if (generation !== state.generation) return;
    showTileJSON(source, tilejson, params);
  }

  /** On a /map page, keep the address bar pointing at what is shown, so it can be shared. */
  function followAddress(source) {
    if (ON_MAP_PAGE) history.replaceState(null, "", apiUrl(`${source.path}/map`));
  }

  function showTileJSON(source, tilejson, params) {
    const mosaic = source.kind === "search";
    // a mosaic's URL is ours (root + search + the rendering query); an image's is its TileJSON's
    const mosaicTiles = apiUrl(`${source.path}/tiles/WebMercatorQuad/{z}/{x}/{y}.png?${params}`);
    const template = mosaic ? `${location.origin}${mosaicTiles}` : tilejson.tiles[0];
    ui.xyzUrl.value = template;
    ui.wmtsLink.href = apiUrl(`${source.path}/WMTSCapabilities.xml?${params}`);

    const [west, south, east, north] = tilejson.bounds;
    const bounds = L.latLngBounds([south, west], [north, east]);
    // {r} asks for @2x tiles on high-density screens; the copied URL stays plain
    const url = template.replace(/\{y\}\.(png|jpg|jpeg|webp)/, "{y}{r}.$1");
    const options = {
      bounds,
      maxNativeZoom: tilejson.maxzoom,
      maxZoom: Math.max(tilejson.maxzoom + 4, 18),
      opacity: Number(ui.opacity.value),
      attribution: "tileserver",
      keepBuffer: 1,
    };
    // a mosaic's TileJSON starts at zoom 0 when its low-zoom pyramid serves them; without
    // one it refuses tiles below its minzoom (400: one would read too many images), so the
    // layer stays empty out there; an image's coarsest tiles are stretched when zoomed out
    if (mosaic) options.minZoom = tilejson.minzoom;
    else options.minNativeZoom = tilejson.minzoom;
    const layer = L.tileLayer(url, options);
    layer.source = source;
    layer.minzoom = tilejson.minzoom;

    // a new image or search: frame it first, so the layer asks only for the tiles it will show
    if (state.shown !== source.key) {
      state.shown = source.key;
      if (state.layer) map.removeLayer(state.layer);
      state.layer = null;
      if (mosaic) removeFootprint();
      else drawFootprint(source.id, bounds);
      map.fitBounds(bounds, { padding: [16, 16], animate: false });
    }

    const previous = state.layer;
    state.layer = layer;
    watchTiles(layer, previous);
    layer.addTo(map);
    if (previous) {
      // keep the old picture until the new one has loaded, but never for long
      setTimeout(() => map.hasLayer(previous) && map.removeLayer(previous), 5000);
    }
    if (mosaic && map.getZoom() < tilejson.minzoom) setStatus(zoomInText(layer), "info");
  }

  /**
   * Status from the tiles: ready when they loaded, else the server's reason. Failed tiles
   * are fetched again, one at a time, to read that reason, until one is worth telling. A
   * mosaic answers 404 where none of its images has a valid pixel: such tiles stay empty,
   * by design, and are no error.
   */
  function watchTiles(layer, previous) {
    const mosaic = layer.source.kind === "search";
    let failed = 0;
    let checks = Promise.resolve();
    layer.on("tileerror", (event) => {
      const src = event.tile.src;
      checks = checks.then(async () => {
        if (failed) return;
        const problem = await tileProblem(src);
        if (mosaic && problem.status === 404) return;
        if (mosaic && problem.status === 503) {
          // the search's low-zoom pyramid is still being built: ask again once it may be there
          if (state.layer === layer) setStatus("Building this mosaic's low zooms…", "info");
          if (!layer.retry) {
            layer.retry = setTimeout(() => {
              layer.retry = null;
              if (map.hasLayer(layer)) layer.redraw();
            }, 1000 * (problem.retryAfter || 5));
          }
          return;
        }
        failed += 1;
        if (state.layer === layer) setStatus(`Tile error ${problem.message}`, "error");
      });
    });
    layer.on("load", () => {
      if (previous) map.removeLayer(previous);
      checks.then(() => {
        if (state.layer === layer && !failed) setStatus(readyText(layer.source), "ready");
      });
    });
  }

  function readyText(source) {
    if (source.kind === "search") {
      const matched = state.search?.matched;
      const images = typeof matched === "number" ? ` of ${plural(matched, "image")}` : "";
      return `Showing the mosaic${images} (pixel selection: ${ui.pixelSelection.value}).`;
    }
    const image = state.images.get(source.id);
    return image ? `Showing ${imageLabel(image)}.` : `Showing ${source.id}.`;
  }

  function zoomInText(layer) {
    return `Zoom in to zoom ${layer.minzoom} or closer to see the mosaic.`;
  }

  /** Why a tile failed: its status and the server's detail. */
  async function tileProblem(src) {
    try {
      const response = await fetch(src);
      if (response.ok) return { status: response.status, message: "a tile failed to load" };
      const retryAfter = Number(response.headers.get("Retry-After")) || 0;
      return { status: response.status, message: await errorText(response), retryAfter };
    } catch (err) {
      return { status: 0, message: `a tile failed to load (${err.message})` };
    }
  }

  function removeFootprint() {
    if (state.footprint) map.removeLayer(state.footprint);
    state.footprint = null;
  }

  function drawFootprint(imageId, bounds) {
    removeFootprint();
    const image = state.images.get(imageId);
    const style = { color: "#1d5fbf", weight: 1.5, fill: false, dashArray: "4 4",
      interactive: false };
    state.footprint = image?.geometry ? L.geoJSON(image.geometry, { style, interactive: false })
      : L.rectangle(bounds, style);
    state.footprint.addTo(map);
  }

  // ---------------------------------------------------------------- views

  /** Show one image ("image") or the mosaic of a search ("search"); apply unless told not to. */
  function setView(view, { render = true } = {}) {
    state.view = view;
    showView();
    if (view === "image") removeHighlight();
    if (view === "search" && !state.search) {
      setStatus("Choose dates, a cloud cover limit or a box, then press Search.", "info");
    }
    if (render) apply();
  }

  /** The view's radio and panels (a browser may restore another radio on reload). */
  function showView() {
    ui.form.querySelector(`input[name="view"][value="${state.view}"]`).checked = true;
    ui.form.classList.remove("view-image", "view-search");
    ui.form.classList.add(`view-${state.view}`);
  }

  // ---------------------------------------------------------------- search

  /** The STAC search body of the panel (POST /stac/search; without limit, POST /searches). */
  function searchBody() {
    const body = { collections: [ui.product.value] };
    const start = ui.searchStart.value;
    const end = ui.searchEnd.value;
    if (start || end) {
      body.datetime = `${start ? `${start}T00:00:00Z` : ".."}/${end ? `${end}T23:59:59Z` : ".."}`;
    }
    if (state.box) body.bbox = [...state.box];
    const cloud = ui.searchCloud.value.trim();
    if (cloud !== "") {
      body.filter = { op: "<=", args: [{ property: "eo:cloud_cover" }, Number(cloud)] };
      body["filter-lang"] = "cql2-json";
    }
    body.limit = SEARCH_LIMIT;
    return body;
  }

  function validateSearch() {
    if (!ui.product.value) return "Choose a product to search.";
    if (ui.searchStart.validity.badInput || ui.searchEnd.validity.badInput) {
      return "Complete the dates, or clear them.";
    }
    const [start, end] = [ui.searchStart.value, ui.searchEnd.value];
    if (start && end && start > end) return "The start date is after the end date.";
    const cloud = ui.searchCloud.value.trim();
    const cover = Number(cloud);
    if (ui.searchCloud.validity.badInput || (cloud !== "" && !(cover >= 0 && cover <= 100))) {
      return "Max cloud cover is a percentage from 0 to 100 (empty: any).";
    }
    return null;
  }

  /** Search the catalog, list the matches and show their mosaic. */
  async function runSearch() {
    const problem = validateSearch();
    if (problem) {
      setStatus(problem, "error");
      return;
    }
    const searching = ++state.searching;
    const { limit, ...registration } = searchBody();
    if (state.view !== "search") setView("search", { render: false });
    setStatus("Searching…", "loading");
    ui.search.disabled = true;
    try {
      const results = await postJSON("/stac/search", { ...registration, limit });
      if (searching !== state.searching) return;
      showResults(results);
      if (!results.features.length) {
        forgetSearch();
        setStatus("No image matches this search.", "info");
        return;
      }
      const registered = await postJSON("/searches", registration);
      if (searching !== state.searching) return;
      showSearch(registered, results.numberMatched);
    } catch (err) {
      if (searching === state.searching) setStatus(`Cannot search: ${err.message}`, "error");
    } finally {
      if (searching === state.searching) ui.search.disabled = false;
    }
  }

  /** Show a registered search ({id, links}) as the mosaic layer. */
  function showSearch(registered, matched) {
    state.search = { id: registered.id, links: registered.links || [], matched };
    const mapLink = state.search.links.find((link) => link.rel === "map");
    const id = document.createElement("code");
    id.id = "search-id";
    id.textContent = registered.id;
    const parts = ["Search ", id];
    if (mapLink) {
      const a = document.createElement("a");
      a.href = mapLink.href;
      a.textContent = "map page";
      a.title = "This mosaic in its own page, to share";
      parts.push(" · ", a);
    }
    ui.searchInfo.replaceChildren(...parts);
    if (state.view === "search") apply();
  }

  /** No search shown any more: its layer goes, the image view is left alone. */
  function forgetSearch() {
    state.search = null;
    state.generation += 1; // drop a mosaic TileJSON still on its way
    ui.searchInfo.replaceChildren();
    if (state.layer?.source.kind === "search") {
      map.removeLayer(state.layer);
      state.layer = null;
      state.shown = null;
      ui.xyzUrl.value = "";
      ui.wmtsLink.href = "#";
    }
  }

  function clearResults() {
    ui.searchCount.textContent = "";
    ui.searchResults.replaceChildren();
    removeHighlight();
  }

  /** The matches of a search (a GeoJSON FeatureCollection), newest first as answered. */
  function showResults(collection) {
    const features = collection.features || [];
    const matched = collection.numberMatched ?? features.length;
    let count = matched ? plural(matched, "image") : "No image matches";
    if (matched > features.length) count += ` (the newest ${features.length} listed)`;
    ui.searchCount.textContent = count;
    ui.searchResults.replaceChildren(...features.map(resultItem));
    removeHighlight();
  }

  /** The image id of a STAC item: from its link to our image, else collection:id. */
  function itemImageId(feature) {
    const href = (feature.links || []).find((link) => link.rel === "alternate")?.href || "";
    const match = href.match(/\/images\/([^/?#]+)$/);
    return match ? decodeURIComponent(match[1]) : `${feature.collection}:${feature.id}`;
  }

  function resultItem(feature) {
    const properties = feature.properties || {};
    const button = document.createElement("button");
    button.type = "button";
    button.className = "result";
    button.dataset.imageId = itemImageId(feature);
    button.dataset.datetime = properties.datetime || "";
    button.dataset.cloud = properties["eo:cloud_cover"] ?? "";
    button.title = `${feature.id}: show this image alone`;
    const day = document.createElement("span");
    day.className = "result-date";
    day.textContent = formatDay(properties.datetime);
    const cloud = document.createElement("span");
    cloud.className = "result-cloud";
    cloud.textContent = formatCloud(properties["eo:cloud_cover"]);
    button.append(day, cloud);
    // pointing at a match outlines it on the map; clicking one shows that image alone, in
    // the image view (its picker, rendering and links), as if picked there
    const show = () => highlight(feature);
    button.addEventListener("mouseenter", show);
    button.addEventListener("focus", show);
    button.addEventListener("mouseleave", removeHighlight);
    button.addEventListener("blur", removeHighlight);
    button.addEventListener("click", () => openResult(feature));
    const item = document.createElement("li");
    item.append(button);
    return item;
  }

  function highlight(feature) {
    removeHighlight();
    if (!feature.bbox) return;
    const [west, south, east, north] = feature.bbox.length === 6
      ? [feature.bbox[0], feature.bbox[1], feature.bbox[3], feature.bbox[4]] : feature.bbox;
    state.highlight = L.rectangle([[south, west], [north, east]], {
      color: "#1d5fbf", weight: 2, fillOpacity: 0.08, interactive: false,
    }).addTo(map);
  }

  function removeHighlight() {
    if (state.highlight) map.removeLayer(state.highlight);
    state.highlight = null;
  }

  async function openResult(feature) {
    const imageId = itemImageId(feature);
    try {
      if (feature.collection && feature.collection !== state.product?.id) {
        selectProduct(feature.collection);
        await loadImages();
      }
      if (!state.images.has(imageId)) addImage(await getJSON(`/images/${idPath(imageId)}`));
    } catch (err) {
      setStatus(`Cannot open ${feature.id}: ${err.message}`, "error");
      return;
    }
    ui.image.value = imageId;
    setView("image", { render: false });
    selectImage(imageId);
  }

  /** Fill the panel from a registered search's body; the names of what it cannot show. */
  function fillSearchForm(search) {
    const [start, end] = (search.datetime || "").includes("/")
      ? search.datetime.split("/") : [search.datetime, search.datetime];
    ui.searchStart.value = dayOf(start);
    ui.searchEnd.value = dayOf(end);
    const cloud = cloudLimit(search.filter);
    ui.searchCloud.value = cloud ?? "";
    setBox(search.bbox || null);
    const shown = ["collections", "datetime", "bbox", "filter", "filter-lang"];
    const more = Object.keys(search).filter((key) => !shown.includes(key)); // ids, sortby...
    if (search.filter && cloud === null) more.push("filter");
    if ((search.collections || []).length > 1) more.push("collections");
    return more;
  }

  function dayOf(text) {
    return /^\d{4}-\d\d-\d\d/.test(text || "") ? text.slice(0, 10) : "";
  }

  /** The max cloud cover of a filter of the panel's simple form, else null. */
  function cloudLimit(filter) {
    if (!filter || filter.op !== "<=" || !Array.isArray(filter.args)) return null;
    const [property, value] = filter.args;
    return property?.property === "eo:cloud_cover" && typeof value === "number" ? value : null;
  }

  /** Open a registered search by id: panel, list and mosaic (a /searches/{id}/map page). */
  async function openSearch(searchId) {
    const registered = await getJSON(`/searches/${encodeURIComponent(searchId)}`);
    const search = registered.search || {};
    const results = await postJSON("/stac/search", { ...search, limit: SEARCH_LIMIT });
    const productId = search.collections?.[0] || results.features[0]?.collection;
    selectProduct(productId);
    const more = fillSearchForm(search);
    setView("search", { render: false });
    await loadImages();
    showResults(results);
    if (!results.features.length) {
      setStatus("No image matches this search.", "info");
      return;
    }
    showSearch(registered, results.numberMatched);
    if (more.length) {
      const note = document.createElement("span");
      note.className = "hint";
      note.textContent = ` · also ${more.join(", ")}: not shown here; Search replaces them`;
      ui.searchInfo.append(note);
    }
  }

  // ---------------------------------------------------------------- search box

  /*
   * Drawing: "Draw box" arms it and turns map dragging off (so the press that starts the box
   * does not pan); the press sets one corner, moving the pointer stretches an L.rectangle,
   * releasing it (anywhere on the page) ends the box. Esc, or "Draw box" again, cancels.
   */
  const drawing = { armed: false, start: null, rectangle: null };
  const BOX_STYLE = { color: "#d9480f", weight: 2, fillOpacity: 0.06, dashArray: "6 4",
    interactive: false };

  function armDrawing() {
    drawing.armed = true;
    map.dragging.disable();
    map.getContainer().classList.add("drawing-box");
    ui.drawBox.setAttribute("aria-pressed", "true");
    setStatus("Drag a box on the map (Esc cancels).", "info");
  }

  function disarmDrawing() {
    drawing.armed = false;
    drawing.start = null;
    if (drawing.rectangle) map.removeLayer(drawing.rectangle);
    drawing.rectangle = null;
    map.dragging.enable();
    L.DomUtil.enableTextSelection();
    map.getContainer().classList.remove("drawing-box");
    ui.drawBox.setAttribute("aria-pressed", "false");
    document.removeEventListener("mousemove", onDrawMove);
    document.removeEventListener("mouseup", onDrawEnd);
  }

  map.on("mousedown", (event) => {
    if (!drawing.armed || drawing.start || event.originalEvent.button !== 0) return;
    drawing.start = event.latlng;
    // the drag draws: it must not select the page's text on its way
    L.DomEvent.preventDefault(event.originalEvent);
    L.DomUtil.disableTextSelection();
    drawing.rectangle = L.rectangle(L.latLngBounds(event.latlng, event.latlng), BOX_STYLE)
      .addTo(map);
    document.addEventListener("mousemove", onDrawMove);
    document.addEventListener("mouseup", onDrawEnd);
  });

  function onDrawMove(event) {
    drawing.rectangle.setBounds(L.latLngBounds(drawing.start, map.mouseEventToLatLng(event)));
  }

  function onDrawEnd(event) {
    const start = drawing.start;
    const end = map.mouseEventToLatLng(event);
    const size = map.latLngToContainerPoint(start).distanceTo(map.latLngToContainerPoint(end));
    disarmDrawing();
    if (size < 4) {
      setStatus("That box is too small: press Draw box and drag over the map.", "info");
      return;
    }
    setBox(boxOf(L.latLngBounds(start, end)));
    setStatus("Box set: press Search.", "info");
  }

  /** [west, south, east, north] in -180..180 (west > east across the antimeridian). */
  function boxOf(bounds) {
    const round = (v) => Math.round(v * BOX_DIGITS) / BOX_DIGITS;
    let west = bounds.getWest();
    let east = bounds.getEast();
    if (east - west >= 360) {
      [west, east] = [-180, 180];
    } else {
      const shift = Math.floor((west + 180) / 360) * 360; // the world copy it was drawn on
      west -= shift;
      east -= shift;
      if (east > 180) east -= 360;
    }
    const clampLat = (v) => Math.max(-90, Math.min(90, v));
    return [round(west), round(clampLat(bounds.getSouth())), round(east),
      round(clampLat(bounds.getNorth()))];
  }

  /** Set (or with null, clear) the search box, on the map and in the panel. */
  function setBox(box) {
    if (state.boxLayer) map.removeLayer(state.boxLayer);
    state.boxLayer = null;
    state.box = box;
    ui.clearBox.disabled = !box;
    if (!box) {
      ui.boxInfo.textContent = "anywhere (no box)";
      return;
    }
    const [west, south, east, north] = box;
    // across the antimeridian the east side is drawn past 180
    const bounds = L.latLngBounds([south, west], [north, east < west ? east + 360 : east]);
    state.boxLayer = L.rectangle(bounds, BOX_STYLE).addTo(map);
    const f = (v) => v.toFixed(3);
    ui.boxInfo.textContent = `${f(west)}, ${f(south)} to ${f(east)}, ${f(north)}`;
  }

  // ---------------------------------------------------------------- events

  let applyTimer = null;
  function applySoon() {
    clearTimeout(applyTimer);
    applyTimer = setTimeout(apply, 150);
  }

  ui.form.addEventListener("submit", (event) => {
    event.preventDefault();
    clearTimeout(applyTimer);
    // Enter in a search field searches; anywhere else it applies the rendering
    if (ui.searchPanel.contains(document.activeElement)) runSearch();
    else apply();
  });

  for (const radio of ui.form.querySelectorAll('input[name="view"]')) {
    radio.addEventListener("change", () => setView(radio.value));
  }

  ui.product.addEventListener("change", async () => {
    selectProduct(ui.product.value);
    const searching = state.searching;
    setStatus("Loading images…", "loading");
    try {
      await loadImages();
    } catch (err) {
      setStatus(`Cannot list images: ${err.message}`, "error");
      return;
    }
    if (state.searching !== searching) return; // a search of the new product began meanwhile
    if (state.view === "image") {
      selectImage(ui.image.value);
    } else if (state.search) {
      runSearch(); // the product is part of the search: the shown mosaic follows it
    } else {
      clearResults();
      setView("search", { render: false });
    }
  });

  ui.search.addEventListener("click", runSearch);
  ui.drawBox.addEventListener("click", () => (drawing.armed ? disarmDrawing() : armDrawing()));
  ui.clearBox.addEventListener("click", () => setBox(null));
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && drawing.armed) {
      disarmDrawing();
      setStatus("Drawing cancelled.", "info");
    }
  });
  ui.pixelSelection.addEventListener("change", applySoon);

  map.on("zoomend", () => {
    const layer = state.layer;
    if (layer?.source.kind === "search" && map.getZoom() < layer.minzoom) {
      setStatus(zoomInText(layer), "info");
    }
  });

  ui.image.addEventListener("change", () => selectImage(ui.image.value));

  ui.moreImages.addEventListener("click", async () => {
    const chosen = ui.image.value;
    try {
      await loadImages({ append: true });
    } catch (err) {
      setStatus(`Cannot list images: ${err.message}`, "error");
    }
    ui.image.value = chosen;
  });

  for (const radio of ui.form.querySelectorAll('input[name="mode"]')) {
    radio.addEventListener("change", () => {
      showMode();
      applySoon();
    });
  }

  for (const select of [ui.bandR, ui.bandG, ui.bandB, ui.colormap]) {
    select.addEventListener("change", applySoon);
  }

  ui.scaling.addEventListener("change", () => {
    const custom = ui.scaling.value === "custom";
    ui.customScalingGroup.hidden = !custom;
    if (custom) {
      if (!ui.customScaling.value) ui.customScaling.value = displayRangeGuess();
      ui.customScaling.focus();
    }
    applySoon();
  });

  // text fields apply on Enter (form submit) or when they lose focus after an edit
  ui.expression.addEventListener("change", applySoon);
  ui.customScaling.addEventListener("change", applySoon);

  ui.opacity.addEventListener("input", () => {
    const value = Number(ui.opacity.value);
    ui.opacityValue.textContent = `${Math.round(value * 100)}%`;
    if (state.layer) state.layer.setOpacity(value);
  });

  ui.copyUrl.addEventListener("click", copyXyzUrl);
  ui.xyzUrl.addEventListener("focus", () => ui.xyzUrl.select());

  async function copyXyzUrl() {
    const text = ui.xyzUrl.value;
    if (!text) return;
    try {
      if (!navigator.clipboard || !window.isSecureContext) throw new Error("no clipboard");
      await navigator.clipboard.writeText(text);
      setStatus("XYZ URL copied: in QGIS add it under XYZ Tiles → New Connection.", "ready");
    } catch {
      ui.xyzUrl.focus();
      ui.xyzUrl.select();
      let copied = false;
      try {
        copied = document.execCommand("copy");
      } catch {
        copied = false;
      }
      setStatus(copied ? "XYZ URL copied." : "The URL is selected: press Ctrl+C (⌘C) to copy.",
        "info");
    }
  }

  function displayRangeGuess() {
    const band = (state.product?.bands || []).find((b) => b.name === ui.bandR.value);
    const range = band?.display_range || band?.data_range;
    return range ? `${range[0]},${range[1]}` : "";
  }

  function selectImage(imageId) {
    describeImage(state.images.get(imageId));
    apply();
  }

  // ---------------------------------------------------------------- start

  async function start() {
    showView();
    try {
      if (!(await loadProducts())) return;
      if (INITIAL_SEARCH) {
        await openSearch(INITIAL_SEARCH);
        return;
      }
      let initial = null;
      if (INITIAL_IMAGE) initial = await getJSON(`/images/${idPath(INITIAL_IMAGE)}`);
      selectProduct(initial ? initial.product_id : state.products[0].id);
      await loadImages();
      if (initial) {
        addImage(initial);
        ui.image.value = initial.id;
      }
      if (!ui.image.value) {
        setStatus("This product has no images yet.", "error");
        return;
      }
      selectImage(ui.image.value);
    } catch (err) {
      setStatus(`Cannot load the catalog: ${err.message}`, "error");
    }
  }

  // for debugging from the console
  window.tileserverViewer = { map, state, apply, runSearch };
  start();
})();
