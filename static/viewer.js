/* tileserver web viewer: pick a product, an image and how to render it; show our own tiles.
 *
 * Plain browser JavaScript, no build step. Talks to the JSON API of the server that served
 * the page (under the `data-root` prefix) and to nothing else.
 */
(() => {
  "use strict";

  const ROOT = document.body.dataset.root || "";
  const INITIAL_IMAGE = document.body.dataset.imageId || "";
  const PAGE_SIZE = 200;
  const $ = (id) => document.getElementById(id);

  const ui = {
    form: $("controls"),
    product: $("product"),
    image: $("image"),
    moreImages: $("more-images"),
    imageInfo: $("image-info"),
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
    layer: null,       // the tile layer on the map
    footprint: null,   // the selected image's outline
    shownImage: null,  // the image id the map was last fitted to
    generation: 0,     // bumps on every apply; stale answers are dropped
  };

  // ---------------------------------------------------------------- helpers

  function setStatus(message, kind = "info") {
    ui.status.textContent = message;
    ui.status.dataset.state = kind;
  }

  function apiUrl(path) {
    return `${ROOT}${path}`;
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

  async function getJSON(path) {
    const response = await fetch(apiUrl(path), { headers: { Accept: "application/json" } });
    if (!response.ok) throw new Error(await errorText(response));
    return response.json();
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
  function renderParams() {
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

  async function apply() {
    const imageId = ui.image.value;
    if (!imageId) return;
    const problem = validate();
    if (problem) {
      setStatus(problem, "error");
      return;
    }
    const generation = ++state.generation;
    const params = renderParams();
    setStatus("Loading tiles…", "loading");
    let tilejson;
    try {
      tilejson = await getJSON(`/images/${idPath(imageId)}/tilejson.json?${params}`);
    } catch (err) {
      if (generation === state.generation) setStatus(`Cannot render: ${err.message}`, "error");
      return;
    }
    if (generation !== state.generation) return;
    showTileJSON(imageId, tilejson, params);
  }

  function showTileJSON(imageId, tilejson, params) {
    const template = tilejson.tiles[0];
    ui.xyzUrl.value = template;
    ui.wmtsLink.href = apiUrl(`/images/${idPath(imageId)}/WMTSCapabilities.xml?${params}`);

    const [west, south, east, north] = tilejson.bounds;
    const bounds = L.latLngBounds([south, west], [north, east]);
    // {r} asks for @2x tiles on high-density screens; the copied URL stays plain
    const url = template.replace(/\{y\}\.(png|jpg|jpeg|webp)/, "{y}{r}.$1");
    const layer = L.tileLayer(url, {
      bounds,
      minNativeZoom: tilejson.minzoom,
      maxNativeZoom: tilejson.maxzoom,
      maxZoom: Math.max(tilejson.maxzoom + 4, 18),
      opacity: Number(ui.opacity.value),
      attribution: "tileserver",
      keepBuffer: 1,
    });

    // a new image: frame it first, so the layer asks only for the tiles it will show
    if (state.shownImage !== imageId) {
      state.shownImage = imageId;
      if (state.layer) map.removeLayer(state.layer);
      state.layer = null;
      drawFootprint(imageId, bounds);
      map.fitBounds(bounds, { padding: [16, 16], animate: false });
    }

    const previous = state.layer;
    state.layer = layer;
    let errors = 0;
    let reported = false;
    layer.on("tileerror", (event) => {
      errors += 1;
      if (!reported) {
        reported = true;
        reportTileError(layer, event.tile.src);
      }
    });
    layer.on("load", () => {
      if (previous) map.removeLayer(previous);
      if (state.layer === layer && !errors) setStatus(readyText(imageId), "ready");
    });
    layer.addTo(map);
    if (previous) {
      // keep the old picture until the new one has loaded, but never for long
      setTimeout(() => map.hasLayer(previous) && map.removeLayer(previous), 5000);
    }
  }

  function readyText(imageId) {
    const image = state.images.get(imageId);
    return image ? `Showing ${imageLabel(image)}.` : `Showing ${imageId}.`;
  }

  async function reportTileError(layer, src) {
    let message = "a tile failed to load";
    try {
      const response = await fetch(src);
      if (!response.ok) message = await errorText(response);
    } catch (err) {
      message = `a tile failed to load (${err.message})`;
    }
    if (state.layer === layer) setStatus(`Tile error ${message}`, "error");
  }

  function drawFootprint(imageId, bounds) {
    if (state.footprint) map.removeLayer(state.footprint);
    const image = state.images.get(imageId);
    const style = { color: "#1d5fbf", weight: 1.5, fill: false, dashArray: "4 4",
      interactive: false };
    state.footprint = image?.geometry ? L.geoJSON(image.geometry, { style, interactive: false })
      : L.rectangle(bounds, style);
    state.footprint.addTo(map);
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
    apply();
  });

  ui.product.addEventListener("change", async () => {
    selectProduct(ui.product.value);
    setStatus("Loading images…", "loading");
    try {
      await loadImages();
    } catch (err) {
      setStatus(`Cannot list images: ${err.message}`, "error");
      return;
    }
    selectImage(ui.image.value);
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
    if (INITIAL_IMAGE && /\/map$/.test(location.pathname)) {
      // keep the address bar pointing at what is shown, so it can be shared
      history.replaceState(null, "", apiUrl(`/images/${idPath(imageId)}/map`));
    }
    apply();
  }

  // ---------------------------------------------------------------- start

  async function start() {
    try {
      if (!(await loadProducts())) return;
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
  window.tileserverViewer = { map, state, apply };
  start();
})();
