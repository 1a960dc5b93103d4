/* tileserver web viewer: pick a product, an image and how to render it; show our own tiles.
 * Or search the catalog (dates, cloud cover, a box drawn on the map) and show the mosaic
 * of the matching images. Click the map for the values there; a one-band colormapped view
 * has a legend; presets are the product's stored ones, then those its bands allow
 * (wavelengths, else common names).
 *
 * The address holds the state: the path names the image or search, the query its rendering
 * (every tile parameter, those without a control kept as they are), the fragment the map
 * view, basemap and opacity. A page opened on such an address shows exactly that.
 *
 * Plain browser JavaScript, no build step. Talks to the JSON API of the server that served
 * the page (under the `data-root` prefix) and to nothing else.
 */
(() => {
  "use strict";

  const ROOT = document.body.dataset.root || "";
  const INITIAL_IMAGE = document.body.dataset.imageId || "";
  const INITIAL_SEARCH = document.body.dataset.searchId || "";
  // the rendering the page was opened with (its query), restored once the product is known
  const INITIAL_QUERY = new URLSearchParams(location.search);
  const BASEMAP_URL = document.body.dataset.basemapUrl || "";
  const BASEMAP_ATTRIBUTION = document.body.dataset.basemapAttribution || "";
  // parameters the page itself takes: never rendering, never kept as "more parameters"
  const PAGE_ONLY = new Set(["api_key", "_"]);
  const STANDARD_SCALINGS = ["display", "auto", "raw", "physical"];
  // parameters only a mosaic takes: not sent for an image (its routes refuse them)
  const MOSAIC_ONLY = new Set(["pixel_selection", "sortby", "exitwhenfull", "skipcovered"]);
  const FAVOURITE_COLORMAPS = ["rdylgn", "viridis", "greys", "magma"];
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
    order: $("order"),
    preset: $("preset"),
    extraParams: $("extra-params"),
    cloudMask: $("cloud-mask"),
    cloudMaskGroup: $("cloud-mask-group"),
    legendBox: $("legend-box"),
    legend: $("legend"),
    basemap: $("basemap"),
    values: $("values"),
    downloadPng: $("download-png"),
    downloadTif: $("download-tif"),
    valuesHint: $("values-hint"),
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
    extras: new URLSearchParams(), // tile parameters without a control, sent as they are
    searchBase: null,  // the shown search's body: the panel edits it, keeping what it cannot show
    presets: [],       // of the selected product (presetsOf)
    params: null,      // the rendering parameters of the layer shown
    basemap: null,     // the basemap layer, if any
    pointMarker: null, // where the map was last clicked
    points: 0,         // bumps on every click; stale answers are dropped
    initialView: null, // [zoom, lat, lon] from the address fragment, used once
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

  // ---------------------------------------------------------------- the address fragment

  /** The fragment's state: map=zoom/lat/lon, basemap, opacity (never sent to the server). */
  function readFragment() {
    const fragment = new URLSearchParams(location.hash.slice(1));
    const view = (fragment.get("map") || "").split("/").map(Number);
    if (view.length === 3 && view.every(Number.isFinite)) state.initialView = view;
    const basemap = fragment.get("basemap");
    if (basemap && ui.basemap.querySelector(`option[value="${CSS.escape(basemap)}"]`)) {
      ui.basemap.value = basemap;
    }
    const opacity = Number(fragment.get("opacity"));
    if (fragment.has("opacity") && opacity >= 0 && opacity <= 1) ui.opacity.value = opacity;
  }

  function fragment() {
    const center = map.getCenter();
    const parts = [`map=${map.getZoom()}/${center.lat.toFixed(5)}/${center.lng.toFixed(5)}`];
    if (ui.basemap.value !== "none") parts.push(`basemap=${ui.basemap.value}`);
    if (Number(ui.opacity.value) !== 1) parts.push(`opacity=${ui.opacity.value}`);
    return `#${parts.join("&")}`;
  }

  function writeFragment() {
    if (!state.shown) return; // nothing shown yet: the address keeps what it was opened with
    history.replaceState(null, "", `${location.pathname}${location.search}${fragment()}`);
  }

  // ---------------------------------------------------------------- basemap

  /** Longitude and latitude lines drawn in the page: a basemap that loads nothing. */
  const Graticule = L.GridLayer.extend({
    createTile(coords) {
      const tile = document.createElement("canvas");
      const size = this.getTileSize();
      tile.width = size.x;
      tile.height = size.y;
      const context = tile.getContext("2d");
      const corner = coords.scaleBy(size);
      const nw = map.unproject(corner, coords.z);
      const se = map.unproject(corner.add(size), coords.z);
      const span = (se.lng - nw.lng) / 2;
      const step = [90, 30, 10, 5, 2, 1, 0.5, 0.2, 0.1, 0.05, 0.02, 0.01, 0.005, 0.002, 0.001]
        .find((s) => s <= span) || 0.0005;
      context.strokeStyle = "rgba(60, 72, 88, 0.35)";
      context.fillStyle = "rgba(60, 72, 88, 0.7)";
      context.font = "10px system-ui, sans-serif";
      context.lineWidth = 1;
      const digits = step >= 1 ? 0 : Math.ceil(-Math.log10(step));
      for (let lng = Math.ceil(nw.lng / step) * step; lng <= se.lng; lng += step) {
        const x = Math.round(map.project([0, lng], coords.z).x - corner.x) + 0.5;
        context.beginPath();
        context.moveTo(x, 0);
        context.lineTo(x, size.y);
        context.stroke();
        context.fillText(`${lng.toFixed(digits)}°`, x + 2, 10);
      }
      for (let lat = Math.ceil(se.lat / step) * step; lat <= nw.lat; lat += step) {
        const y = Math.round(map.project([lat, 0], coords.z).y - corner.y) + 0.5;
        context.beginPath();
        context.moveTo(0, y);
        context.lineTo(size.x, y);
        context.stroke();
        context.fillText(`${lat.toFixed(digits)}°`, 2, y - 2);
      }
      return tile;
    },
  });

  /** The chosen basemap under the imagery: none, the grid, or the configured tiles. */
  function showBasemap() {
    if (state.basemap) map.removeLayer(state.basemap);
    state.basemap = null;
    const choice = ui.basemap.value;
    if (choice === "grid") state.basemap = new Graticule({ zIndex: 0 });
    if (choice === "tiles" && BASEMAP_URL) {
      // Leaflet writes attributions as HTML: the configured text goes in as text
      const text = document.createElement("span");
      text.textContent = BASEMAP_ATTRIBUTION;
      state.basemap = L.tileLayer(BASEMAP_URL, { zIndex: 0, attribution: text.innerHTML });
    }
    if (state.basemap) state.basemap.addTo(map);
  }

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

  /** Whether the product has a cloud band `cloud_mask=default` uses: a class band tagged
   * `cloud_mask:...` or named SCL (tileserver/render/pipeline.py product_cloud_mask). */
  function hasCloudBand(product) {
    return (product.bands || []).some((b) => b.type === "class" && (
      (b.name || "").toUpperCase() === "SCL"
      || (b.tags || []).some((t) => t.startsWith("cloud_mask:"))));
  }

  function fillBands(product) {
    fillPresets(product);
    ui.cloudMaskGroup.hidden = !hasCloudBand(product);
    if (ui.cloudMaskGroup.hidden) ui.cloudMask.checked = false;
    showSeriesMask();
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

  /** NDVI when the product has red and near-infrared bands (presetsOf), else a guess. */
  function suggestExpression() {
    const ndvi = state.presets.find((p) => p.id === "ndvi");
    if (ndvi) return ndvi.expression;
    const names = (state.product?.bands || []).map((b) => b.name);
    const [a, b] = names;
    return a && b ? `(${b}-${a})/(${b}+${a})` : a || "";
  }

  // ---------------------------------------------------------------- presets

  // band roles by centre wavelength (nm): [lowest, highest, ideal]
  const ROLES = {
    blue: [440, 520, 490],
    green: [520, 600, 560],
    red: [620, 700, 665],
    nir: [760, 900, 842],
    swir: [1550, 1750, 1610],
  };
  // the common names of STAC's eo extension, for bands without wavelengths
  const COMMON_NAMES = {
    blue: ["blue"],
    green: ["green"],
    red: ["red"],
    nir: ["nir", "nir08", "nir09"],
    swir: ["swir16", "swir1", "swir"],
  };

  function centre(band) {
    if (typeof band.wavelength_nm_center === "number") return band.wavelength_nm_center;
    const [lo, hi] = [band.wavelength_nm_min, band.wavelength_nm_max];
    return typeof lo === "number" && typeof hi === "number" ? (lo + hi) / 2 : null;
  }

  /** The band of a role: the one whose wavelength is nearest its ideal within its range,
   * else one with its common name, else none. */
  function bandFor(bands, role) {
    const [lo, hi, ideal] = ROLES[role];
    let best = null;
    for (const band of bands) {
      const c = centre(band);
      if (c === null || c < lo || c > hi) continue;
      if (!best || Math.abs(c - ideal) < Math.abs(centre(best) - ideal)) best = band;
    }
    if (!best) {
      best = bands.find((band) => COMMON_NAMES[role].includes(band.name.toLowerCase()));
    }
    return best ? best.name : null;
  }

  /** The product's stored presets (GET /products/{id}: `presets`) first, then the
   * renderings its bands allow: true colour, false colour, NDVI, NDWI. */
  function presetsOf(product) {
    const stored = Object.entries(product.presets || {}).map(([name, p]) => ({
      id: name, label: p.title || name, bands: p.bands || undefined,
      expression: p.expression || undefined, colormap: p.colormap_name || "",
      scaling: p.scaling || undefined,
    })).filter((p) => p.expression || (p.bands && p.bands.length === 3));
    return [...stored, ...derivedPresets(product).filter((d) => !stored.some((p) => p.id === d.id))];
  }

  function derivedPresets(product) {
    const bands = (product.bands || []).filter(
      (b) => !b.is_alpha && (b.type || "spectral") === "spectral"
    );
    const [blue, green, red, nir] = ["blue", "green", "red", "nir"].map((r) => bandFor(bands, r));
    const presets = [];
    if (red && green && blue) {
      presets.push({ id: "true-colour", label: `True colour (${red}, ${green}, ${blue})`,
        bands: [red, green, blue] });
    }
    if (nir && red && green) {
      presets.push({ id: "false-colour", label: `False colour (${nir}, ${red}, ${green})`,
        bands: [nir, red, green] });
    }
    if (nir && red) {
      presets.push({ id: "ndvi", label: `NDVI (${nir}, ${red})`,
        expression: `(${nir}-${red})/(${nir}+${red})`, colormap: "rdylgn" });
    }
    if (green && nir) {
      presets.push({ id: "ndwi", label: `NDWI (${green}, ${nir})`,
        expression: `(${green}-${nir})/(${green}+${nir})`, colormap: "viridis" });
    }
    return presets;
  }

  function fillPresets(product) {
    state.presets = presetsOf(product);
    ui.preset.replaceChildren(option("", "custom"),
      ...state.presets.map((p) => option(p.id, p.label)));
    ui.preset.disabled = state.presets.length === 0;
  }

  /** Set the controls to a preset (its scaling: display, the product's own ranges). */
  function usePreset(id) {
    const preset = state.presets.find((p) => p.id === id);
    if (!preset) return;
    takeOver("bands", "expression", "colormap_name", "colormap", "scaling");
    if (preset.expression) {
      ui.expression.value = preset.expression;
      setMode("expression");
    } else {
      [ui.bandR.value, ui.bandG.value, ui.bandB.value] = preset.bands;
      setMode("rgb");
    }
    ensureOption(ui.colormap, preset.colormap || "");
    ui.colormap.value = preset.colormap || "";
    const scaling = preset.scaling || ["display"];
    if (scaling.length === 1 && STANDARD_SCALINGS.includes(scaling[0])) {
      ui.scaling.value = scaling[0];
    } else {
      ui.scaling.value = "custom";
      ui.customScaling.value = scaling.join(";");
    }
    showScaling();
  }

  /** The preset the controls show, if any, in the preset picker. */
  function showPreset() {
    const current = mode();
    const plain = ["bands", "expression", "colormap_name", "colormap", "scaling"]
      .every((key) => !state.extras.has(key)) && ui.scaling.value === "display";
    const match = plain && state.presets.find((p) => (p.expression
      ? current === "expression" && ui.expression.value.trim() === p.expression
        && ui.colormap.value === p.colormap
      : current === "rgb"
        && [ui.bandR.value, ui.bandG.value, ui.bandB.value].join(",") === p.bands.join(",")));
    ui.preset.value = match ? match.id : "";
  }

  function ensureOption(select, value) {
    if (![...select.options].some((o) => o.value === value)) select.append(option(value, value));
  }

  /** Colormap names from the server, the usual ones first. */
  async function loadColormaps() {
    let names = [];
    try {
      ({ colormaps: names } = await getJSON("/colormaps"));
    } catch {
      return; // the few built into the page remain
    }
    const chosen = ui.colormap.value;
    const rest = names.filter((n) => !FAVOURITE_COLORMAPS.includes(n));
    ui.colormap.replaceChildren(option("", "none"),
      ...[...FAVOURITE_COLORMAPS, ...rest].map((n) => option(n, n)));
    ensureOption(ui.colormap, chosen);
    ui.colormap.value = chosen;
  }

  // ---------------------------------------------------------------- the address query

  /** Controls from an address's query; what they cannot show is kept as it is (extras). */
  function restoreRendering(query, { mosaic }) {
    const q = new URLSearchParams(query);
    for (const key of PAGE_ONLY) q.delete(key);
    const names = new Set([...ui.bandR.options].map((o) => o.value));
    const bands = (q.get("bands") || "").split(",").map((b) => b.trim()).filter(Boolean);
    if (q.has("expression")) {
      ui.expression.value = q.get("expression");
      setMode("expression");
    } else if (bands.length === 1 && names.has(bands[0])) {
      ui.bandR.value = bands[0];
      setMode("single");
    } else if (bands.length === 3 && bands.every((b) => names.has(b))) {
      [ui.bandR.value, ui.bandG.value, ui.bandB.value] = bands;
      setMode("rgb");
    }
    const colormap = q.get("colormap_name") || "";
    ensureOption(ui.colormap, colormap);
    ui.colormap.value = colormap;
    const scalings = q.getAll("scaling");
    if (scalings.length === 1 && STANDARD_SCALINGS.includes(scalings[0])) {
      ui.scaling.value = scalings[0];
    } else if (scalings.length) {
      ui.scaling.value = "custom";
      ui.customScaling.value = scalings.join(";");
    }
    showScaling({ focus: false });
    const selection = q.get("pixel_selection");
    if (selection && [...ui.pixelSelection.options].some((o) => o.value === selection)) {
      ui.pixelSelection.value = selection;
    }
    const sortby = q.get("sortby");
    if (sortby) {
      ensureOption(ui.order, sortby);
      ui.order.value = sortby;
    }
    ui.cloudMask.checked = !ui.cloudMaskGroup.hidden && q.get("cloud_mask") === "default";
    // every parameter the controls do not reproduce exactly is sent as it came
    state.extras = new URLSearchParams();
    const produced = renderParams({ mosaic });
    for (const key of new Set(q.keys())) {
      if (JSON.stringify(q.getAll(key)) !== JSON.stringify(produced.getAll(key))) {
        for (const value of q.getAll(key)) state.extras.append(key, value);
      }
    }
    showExtras();
  }

  function showExtras() {
    ui.extraParams.value = decodeURIComponent(state.extras.toString().replace(/\+/g, " "));
  }

  /** A control was used: the parameters it sets are no longer taken from the extras. */
  function takeOver(...keys) {
    if (!keys.some((key) => state.extras.has(key))) return;
    for (const key of keys) state.extras.delete(key);
    showExtras();
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
    if (ui.scaling.value !== "custom") {
      params.set("scaling", ui.scaling.value);
    } else {
      // several ranges (one per band) are separated by ";", a JSON object is one value
      const text = ui.customScaling.value.trim();
      const ranges = text.startsWith("{") ? [text] : text.split(";");
      for (const range of ranges) if (range.trim()) params.append("scaling", range.trim());
    }
    if (ui.cloudMask.checked && !ui.cloudMaskGroup.hidden) params.set("cloud_mask", "default");
    if (mosaic) {
      params.set("pixel_selection", ui.pixelSelection.value);
      if (ui.order.value) params.set("sortby", ui.order.value);
    }
    // parameters without a control (from the address or typed) win over the controls'
    for (const key of new Set(state.extras.keys())) {
      if (!mosaic && MOSAIC_ONLY.has(key)) continue;
      params.delete(key);
      if (key === "colormap") params.delete("colormap_name");
      for (const value of state.extras.getAll(key)) params.append(key, value);
    }
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
    followAddress(source, params);
    showPreset();
    setStatus("Loading tiles…", "loading");
    let tilejson;
    try {
      tilejson = await getJSON(`${source.path}/tilejson.json?${params}`);
    } catch (err) {
      if (generation === state.generation) setStatus(`Cannot render: ${err.message}`, "error");
      return;
    }
    if (generation !== state.generation) return;
    state.params = params;
    showTileJSON(source, tilejson, params);
    showLegend(source, params);
    showDownloads();
  }

  /** Keep the address on what is shown and how (the map page of it), so it can be shared. */
  function followAddress(source, params) {
    const query = params.toString();
    const path = apiUrl(`${source.path}/map${query ? `?${query}` : ""}`);
    history.replaceState(null, "", `${path}${state.shown ? fragment() : location.hash}`);
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
      zIndex: 10, // above the basemap
    };
    // a mosaic's TileJSON starts at zoom 0 when its low-zoom pyramid serves them; without
    // one it refuses tiles below its minzoom (400: one would read too many images), so the
    // layer stays empty out there; an image's coarsest tiles are stretched when zoomed out
    if (mosaic) options.minZoom = tilejson.minzoom;
    else options.minNativeZoom = tilejson.minzoom;
    const layer = L.tileLayer(url, options);
    layer.source = source;
    layer.minzoom = tilejson.minzoom;
    layer.generation = state.generation; // a later apply, even a failed one, outdates it

    // a new image or search: frame it first, so the layer asks only for the tiles it will show
    if (state.shown !== source.key) {
      state.shown = source.key;
      if (state.layer) map.removeLayer(state.layer);
      state.layer = null;
      if (mosaic) removeFootprint();
      else drawFootprint(source.id, bounds);
      if (state.initialView) {
        // the view the address was opened with, once
        const [zoom, lat, lon] = state.initialView;
        state.initialView = null;
        map.setView([lat, lon], zoom, { animate: false });
      } else {
        map.fitBounds(bounds, { padding: [16, 16], animate: false });
      }
      writeFragment();
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
        if (state.layer === layer && !failed && state.generation === layer.generation) {
          setStatus(readyText(layer.source), "ready");
        }
      });
    });
  }

  function readyText(source) {
    if (source.kind === "search") {
      const matched = state.search?.matched;
      const images = typeof matched === "number" ? ` of ${plural(matched, "image")}` : "";
      const order = ui.order.value ? `, order: ${ui.order.selectedOptions[0].textContent}` : "";
      return `Showing the mosaic${images} (pixel selection: ${ui.pixelSelection.value}${order}).`;
    }
    const image = state.images.get(source.id);
    return image ? `Showing ${imageLabel(image)}.` : `Showing ${source.id}.`;
  }

  // ---------------------------------------------------------------- downloads

  /** Links to the shown layer's picture and GeoTIFF of the map's extent (within its bounds). */
  function showDownloads() {
    const layer = state.layer;
    const view = map.getBounds();
    const bounds = layer?.options.bounds;
    const links = [ui.downloadPng, ui.downloadTif];
    const west = Math.max(view.getWest(), bounds ? bounds.getWest() : 0);
    const east = Math.min(view.getEast(), bounds ? bounds.getEast() : 0);
    const south = Math.max(view.getSouth(), bounds ? bounds.getSouth() : 0);
    const north = Math.min(view.getNorth(), bounds ? bounds.getNorth() : 0);
    if (!layer || !state.params || !(west < east && south < north)) {
      for (const link of links) {
        link.removeAttribute("href");
        link.setAttribute("aria-disabled", "true");
      }
      return;
    }
    const box = [west, south, east, north].map((v) => v.toFixed(6)).join(",");
    const path = layer.source.path;
    const picture = new URLSearchParams(state.params);
    picture.set("max_size", "1024");
    ui.downloadPng.href = apiUrl(`${path}/bbox/${box}.png?${picture}`);
    const crop = new URLSearchParams(state.params);
    crop.set("bbox", box);
    const file = layer.source.kind === "search" ? "mosaic" : "download";
    ui.downloadTif.href = apiUrl(`${path}/${file}.tif?${crop}`);
    for (const link of links) link.removeAttribute("aria-disabled");
  }

  // ---------------------------------------------------------------- legend

  /** Whether a legend can be drawn: one output, and a colormap (asked for or the band's). */
  function hasLegend(params) {
    if (params.has("colormap_name") || params.has("colormap")) {
      return (params.get("expression") || "").split(";").length === 1
        && (params.get("bands") || "").split(",").length === 1;
    }
    if (params.has("expression")) return false;
    const names = (params.get("bands") || "").split(",");
    if (names.length !== 1) return false;
    const band = (state.product?.bands || []).find((b) => b.name === names[0]);
    return Boolean(band && ((band.type === "class" && band.colormap) || band.colormap_name));
  }

  function showLegend(source, params) {
    if (!hasLegend(params)) {
      ui.legendBox.hidden = true;
      ui.legend.removeAttribute("src");
      return;
    }
    const query = new URLSearchParams(params);
    query.set("width", "256");
    query.set("height", "40");
    const src = apiUrl(`${source.path}/legend.png?${query}`);
    if (ui.legend.getAttribute("src") !== src) ui.legend.src = src;
    ui.legendBox.hidden = false;
  }

  ui.legend.addEventListener("error", () => {
    ui.legendBox.hidden = true;
  });

  // ---------------------------------------------------------------- values where clicked

  /** Values where the map was clicked, of what is shown, as the server reads them there. */
  async function showPoint(latlng) {
    const source = state.layer?.source;
    if (!source || !state.params) return;
    const points = ++state.points;
    const where = latlng.wrap();
    const lon = where.lng.toFixed(6);
    const lat = where.lat.toFixed(6);
    if (state.pointMarker) map.removeLayer(state.pointMarker);
    state.pointMarker = L.circleMarker(latlng, {
      radius: 5, color: "#d9480f", weight: 2, fillOpacity: 0.3, interactive: false,
    }).addTo(map);
    ui.valuesHint.textContent = `Values at ${lon}, ${lat}…`;
    ui.values.replaceChildren();
    ui.values.dataset.state = "loading";
    let answer;
    try {
      answer = await getJSON(`${source.path}/point/${lon},${lat}?${state.params}`);
    } catch (err) {
      if (points !== state.points) return;
      ui.valuesHint.textContent = `No values at ${lon}, ${lat}: ${err.message}`;
      ui.values.dataset.state = "error";
      return;
    }
    if (points !== state.points) return;
    ui.valuesHint.textContent = `Values at ${lon}, ${lat}`;
    ui.values.replaceChildren(...(answer.images ? searchValues(answer) : imageValues(answer)));
    ui.values.dataset.state = "ready";
  }

  function formatValue(value) {
    if (value === null || value === undefined) return "–";
    if (Number.isInteger(value)) return String(value);
    return Math.abs(value) >= 100 ? value.toFixed(1) : value.toPrecision(4);
  }

  function cell(tag, text, value) {
    const el = document.createElement(tag);
    el.textContent = text;
    if (value !== undefined) el.dataset.value = value === null ? "" : String(value);
    return el;
  }

  function table(className, head, rows) {
    const el = document.createElement("table");
    el.className = `values ${className}`;
    const top = document.createElement("tr");
    top.append(...head.map((text) => cell("th", text)));
    el.append(top, ...rows);
    return el;
  }

  /** An image's values: per output its value (at the processing level), and the raw. */
  function imageValues(answer) {
    const rows = answer.band_names.map((name, i) => {
      const row = document.createElement("tr");
      const raw = answer.bands?.[name]?.raw;
      row.append(cell("th", name), cell("td", formatValue(answer.values[i]), answer.values[i]),
        cell("td", raw === undefined ? "" : formatValue(raw)));
      return row;
    });
    return [table("image-values", ["", "value", "stored"], rows)];
  }

  /** A mosaic's: the value shown, then every image meeting the point in paint order. */
  function searchValues(answer) {
    const names = answer.band_names;
    const shown = answer.mosaic || {};
    const head = document.createElement("p");
    head.className = "values-shown";
    head.append(`Shown (${shown.pixel_selection}): `);
    names.forEach((name, i) => {
      const value = shown.values?.[i] ?? null;
      const b = cell("b", `${name} ${formatValue(value)}`, value);
      b.className = "shown-value";
      head.append(b, i + 1 < names.length ? ", " : "");
    });
    const used = new Set(shown.images || []);
    const rows = answer.images.map((image) => {
      const row = document.createElement("tr");
      row.dataset.imageId = image.id;
      row.className = used.has(image.id) ? "used" : image.valid ? "" : "invalid";
      row.title = image.id;
      row.append(cell("td", formatDay(image.datetime)),
        ...names.map((_, i) => cell("td", image.valid ? formatValue(image.values[i]) : "no data",
          image.valid ? image.values[i] : null)));
      return row;
    });
    const drill = table("drill", ["date", ...names], rows);
    const parts = [head, drill];
    const chart = drillChart(answer.images);
    if (chart) parts.push(chart);
    return parts;
  }

  /** The first output's values through the dates, as a small SVG line. */
  function drillChart(images) {
    const points = images.filter((i) => i.valid && typeof i.values[0] === "number")
      .map((i) => [Date.parse(i.datetime), i.values[0]]).sort((a, b) => a[0] - b[0]);
    if (points.length < 2) return null;
    const [w, h, pad] = [280, 80, 6];
    const xs = points.map((p) => p[0]);
    const ys = points.map((p) => p[1]);
    const [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
    const x = (v) => pad + ((v - x0) / (x1 - x0 || 1)) * (w - 2 * pad);
    const y = (v) => h - pad - ((v - y0) / (y1 - y0 || 1)) * (h - 2 * pad);
    const ns = "http://www.w3.org/2000/svg";
    const svg = document.createElementNS(ns, "svg");
    svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
    svg.setAttribute("class", "drill-chart");
    svg.setAttribute("role", "img");
    svg.setAttribute("aria-label", `values from ${formatValue(y0)} to ${formatValue(y1)}`);
    const line = document.createElementNS(ns, "polyline");
    line.setAttribute("points", points.map(([t, v]) => `${x(t)},${y(v)}`).join(" "));
    svg.append(line);
    for (const [t, v] of points) {
      const dot = document.createElementNS(ns, "circle");
      dot.setAttribute("cx", x(t));
      dot.setAttribute("cy", y(v));
      dot.setAttribute("r", 2.5);
      svg.append(dot);
    }
    return svg;
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

  // the keys of a search body the panel shows; the others (ids, sortby, intersects, query...)
  // of the search shown are kept as they are when it searches again
  const PANEL_KEYS = ["collections", "datetime", "bbox", "filter", "filter-lang", "limit"];

  /** The STAC search body of the panel (POST /stac/search; without limit, POST /searches):
   * the shown search's body, edited by the panel. Its filter keeps every term but the cloud
   * limit the panel shows; what is unchanged is sent as it was, so the same search keeps
   * its id. */
  function searchBody() {
    const base = state.searchBase || {};
    const body = {};
    for (const [key, value] of Object.entries(base)) if (!PANEL_KEYS.includes(key)) body[key] = value;
    const product = ui.product.value;
    body.collections = (base.collections || []).includes(product) ? [...base.collections]
      : [product];
    const start = ui.searchStart.value;
    const end = ui.searchEnd.value;
    const [baseStart, baseEnd] = datesOf(base.datetime);
    if (base.datetime && start === baseStart && end === baseEnd) {
      body.datetime = base.datetime;
    } else if (start || end) {
      body.datetime = `${start ? `${start}T00:00:00Z` : ".."}/${end ? `${end}T23:59:59Z` : ".."}`;
    }
    if (state.box) body.bbox = [...state.box];
    const { cloud: baseCloud, rest } = splitFilter(base.filter);
    const terms = [...rest];
    const cloud = ui.searchCloud.value.trim();
    if (cloud !== "") {
      const limit = Number(cloud);
      const op = baseCloud && baseCloud.value === limit ? baseCloud.op : "<=";
      terms.push({ op, args: [{ property: "eo:cloud_cover" }, limit] });
    }
    if (terms.length) {
      body.filter = terms.length === 1 ? terms[0] : { op: "and", args: terms };
      body["filter-lang"] = "cql2-json";
    }
    body.limit = SEARCH_LIMIT;
    return body;
  }

  /** A filter (CQL2-JSON) as its cloud cover limit, if any, and its other terms. */
  function splitFilter(filter) {
    if (!filter) return { cloud: null, rest: [] };
    const terms = filter.op === "and" && Array.isArray(filter.args) ? filter.args : [filter];
    let cloud = null;
    const rest = [];
    for (const term of terms) {
      const limit = cloud ? null : cloudLimit(term);
      if (limit) cloud = limit;
      else rest.push(term);
    }
    return { cloud, rest };
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
      state.searchBase = registration;
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

  /** Fill the panel from a registered search's body; the names of what it does not show. */
  function fillSearchForm(search) {
    state.searchBase = search;
    const [start, end] = datesOf(search.datetime);
    ui.searchStart.value = start;
    ui.searchEnd.value = end;
    const { cloud, rest } = splitFilter(search.filter);
    ui.searchCloud.value = cloud ? cloud.value : "";
    setBox(search.bbox || null);
    const more = Object.keys(search).filter((key) => !PANEL_KEYS.includes(key)); // ids, sortby...
    if (rest.length) more.push("filter terms");
    if ((search.collections || []).length > 1) more.push("collections");
    return more;
  }

  /** The first and last day (YYYY-MM-DD, or "") of a STAC datetime. */
  function datesOf(datetime) {
    const [start, end] = (datetime || "").includes("/") ? datetime.split("/")
      : [datetime, datetime];
    return [dayOf(start), dayOf(end)];
  }

  function dayOf(text) {
    return /^\d{4}-\d\d-\d\d/.test(text || "") ? text.slice(0, 10) : "";
  }

  /** The cloud cover limit of a filter term `eo:cloud_cover < or <= N`: {op, value}, or null. */
  function cloudLimit(term) {
    if (!term || !["<", "<="].includes(term.op) || !Array.isArray(term.args)) return null;
    if (term.args.length !== 2) return null;
    const [property, value] = term.args;
    return property?.property === "eo:cloud_cover" && typeof value === "number"
      ? { op: term.op, value } : null;
  }

  /** Open a registered search by id: panel, list and mosaic (a /searches/{id}/map page). */
  async function openSearch(searchId) {
    const registered = await getJSON(`/searches/${encodeURIComponent(searchId)}`);
    const search = registered.search || {};
    const results = await postJSON("/stac/search", { ...search, limit: SEARCH_LIMIT });
    const productId = search.collections?.[0] || results.features[0]?.collection;
    selectProduct(productId);
    restoreRendering(INITIAL_QUERY, { mosaic: true });
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
      note.textContent = ` · also ${more.join(", ")}: not shown here, kept when you search`;
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

  // ---------------------------------------------------------------- time series

  /* A drawn area (two clicks: opposite corners) or a picked parcel: the mean per date of the
   * shown expression (else the NDVI preset's, else the first shown band) of the shown
   * product, as the server's PNG plot, with a CSV of the same series on request. */
  const series = { mode: null, corner: null, outline: null, shape: null, asked: 0,
    plotUrl: null, path: null, body: null, query: null, layers: [] };
  const SERIES_STYLE = { color: "#7048e8", weight: 2, fillOpacity: 0.08, interactive: false };
  const CLOUD_MASK = "SCL:3,8,9,10";
  const seriesUi = {
    start: $("series-start"), end: $("series-end"), mask: $("series-mask"),
    maskLabel: $("series-mask-label"), draw: $("series-draw"), pick: $("series-pick"),
    layer: $("series-layer"), info: $("series-info"), box: $("series-box"),
    plot: $("series-plot"), open: $("series-open"), csv: $("series-csv"),
  };

  /** What to plot: the shown expression, else the NDVI preset's, else the first band. */
  function seriesWhat() {
    const params = state.params || new URLSearchParams();
    if (params.get("expression")) return { expression: params.get("expression") };
    const ndvi = state.presets.find((p) => p.id === "ndvi");
    if (ndvi) return { expression: ndvi.expression };
    const band = (params.get("bands") || "").split(",")[0];
    return band ? { bands: [band] } : null;
  }

  function hasScl() {
    return (state.product?.bands || []).some((b) => b.name === "SCL" && b.type === "class");
  }

  /** Dates default to the year of the shown image (or the search's dates). */
  function seriesDates() {
    if (!seriesUi.start.value || !seriesUi.end.value) {
      const image = state.images.get(ui.image.value);
      const year = (image?.acquired || new Date().toISOString()).slice(0, 4);
      seriesUi.start.value ||= ui.searchStart.value || `${year}-01-01`;
      seriesUi.end.value ||= ui.searchEnd.value || `${year}-12-31`;
    }
    return [seriesUi.start.value, seriesUi.end.value];
  }

  function armSeries(mode) {
    disarmSeries();
    series.mode = mode;
    (mode === "draw" ? seriesUi.draw : seriesUi.pick).setAttribute("aria-pressed", "true");
    map.getContainer().classList.add("drawing-box");
    seriesUi.info.textContent = mode === "draw"
      ? "Click one corner of the area, then the opposite one (Esc cancels)."
      : "Click a parcel on the map (Esc cancels).";
  }

  function disarmSeries() {
    series.mode = null;
    series.corner = null;
    seriesUi.draw.setAttribute("aria-pressed", "false");
    seriesUi.pick.setAttribute("aria-pressed", "false");
    map.getContainer().classList.remove("drawing-box");
    map.off("mousemove", onSeriesMove);
  }

  function showOutline(layer) {
    if (series.outline) map.removeLayer(series.outline);
    series.outline = layer ? layer.addTo(map) : null;
  }

  function onSeriesMove(event) {
    if (series.corner) series.outline.setBounds(L.latLngBounds(series.corner, event.latlng));
  }

  /** A map click while drawing or picking; true when it was one. */
  function seriesClick(latlng) {
    if (series.mode === "pick") {
      disarmSeries();
      pickParcel(latlng.wrap());
      return true;
    }
    if (series.mode !== "draw") return false;
    if (!series.corner) {
      series.corner = latlng;
      showOutline(L.rectangle(L.latLngBounds(latlng, latlng), SERIES_STYLE));
      map.on("mousemove", onSeriesMove);
      return true;
    }
    const bounds = L.latLngBounds(series.corner, latlng);
    disarmSeries();
    series.outline.setBounds(bounds);
    const [west, south, east, north] = boxOf(bounds);
    if (!(west < east && south < north)) {
      seriesUi.info.textContent = "That area is empty: draw it again.";
      return true;
    }
    series.shape = { type: "Polygon", coordinates: [[[west, south], [east, south],
      [east, north], [west, north], [west, south]]] };
    series.path = "/timeseries";
    series.query = null;
    plotSeries();
    return true;
  }

  async function pickParcel(where) {
    const layer = seriesUi.layer.value;
    const at = new URLSearchParams({ lon: where.lng.toFixed(6), lat: where.lat.toFixed(6),
      geometry: "true" });
    let parcel;
    try {
      parcel = await getJSON(`/parcels/${encodeURIComponent(layer)}/at?${at}`);
    } catch (err) {
      seriesUi.info.textContent = `No parcel there: ${err.message}`;
      return;
    }
    showOutline(L.geoJSON(parcel.geometry, { style: SERIES_STYLE, interactive: false }));
    series.shape = null;
    series.path = `/parcels/${encodeURIComponent(layer)}/${encodeURIComponent(parcel.id)}`
      + "/timeseries";
    plotSeries();
  }

  /** The series request: a POST body for a drawn area, a query for a parcel. */
  function seriesRequest(format) {
    const what = seriesWhat();
    const [start, end] = seriesDates();
    const request = { product: state.product.id, start_date: start, end_date: end, ...what };
    if (hasScl() && seriesUi.mask.checked) request.cloud_mask = CLOUD_MASK;
    if (series.shape) {
      return fetch(apiUrl(`${series.path}?format=${format}`), {
        method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ geometry: series.shape, ...request }),
      });
    }
    const query = new URLSearchParams({ ...request, format });
    if (what.bands) query.set("bands", what.bands.join(","));
    return fetch(apiUrl(`${series.path}?${query}`));
  }

  async function plotSeries() {
    if (!series.path || !state.product || !seriesWhat()) return;
    const asked = ++series.asked;
    seriesUi.info.textContent = "Computing the time series…";
    let blob;
    try {
      const response = await seriesRequest("png");
      if (!response.ok) throw new Error(await errorText(response));
      blob = await response.blob();
    } catch (err) {
      if (asked === series.asked) seriesUi.info.textContent = `No time series: ${err.message}`;
      return;
    }
    if (asked !== series.asked) return;
    if (series.plotUrl) URL.revokeObjectURL(series.plotUrl);
    series.plotUrl = URL.createObjectURL(blob);
    seriesUi.plot.src = series.plotUrl;
    seriesUi.open.href = series.plotUrl;
    seriesUi.box.hidden = false;
    seriesUi.csv.hidden = false;
    const what = seriesWhat();
    seriesUi.info.textContent = `Mean of ${what.expression || what.bands[0]} per date`
      + (hasScl() && seriesUi.mask.checked ? ", clouds masked." : ".");
  }

  async function downloadSeriesCsv() {
    let blob;
    try {
      const response = await seriesRequest("csv");
      if (!response.ok) throw new Error(await errorText(response));
      blob = await response.blob();
    } catch (err) {
      seriesUi.info.textContent = `No CSV: ${err.message}`;
      return;
    }
    const link = document.createElement("a");
    link.href = URL.createObjectURL(blob);
    link.download = `timeseries_${state.product.id}.csv`;
    link.click();
    setTimeout(() => URL.revokeObjectURL(link.href), 10_000);
  }

  /** Parcel layers, if the server has any: then a parcel can be picked. */
  async function loadParcelLayers() {
    try {
      series.layers = (await getJSON("/parcels")).layers || [];
    } catch {
      series.layers = [];
    }
    const names = series.layers.map((layer) => layer.name);
    seriesUi.layer.replaceChildren(...names.map((name) => option(name, name)));
    seriesUi.layer.hidden = names.length === 0;
    seriesUi.pick.hidden = names.length === 0;
  }

  function showSeriesMask() {
    seriesUi.maskLabel.hidden = !hasScl();
  }

  seriesUi.draw.addEventListener("click", () => (series.mode === "draw" ? disarmSeries()
    : armSeries("draw")));
  seriesUi.pick.addEventListener("click", () => (series.mode === "pick" ? disarmSeries()
    : armSeries("pick")));
  seriesUi.csv.addEventListener("click", downloadSeriesCsv);
  for (const input of [seriesUi.start, seriesUi.end, seriesUi.mask]) {
    input.addEventListener("change", plotSeries);
  }
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && series.mode) {
      const halfDrawn = series.corner !== null;
      disarmSeries();
      if (halfDrawn) showOutline(null);
      seriesUi.info.textContent = "Cancelled.";
    }
  });

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
    if (ui.searchPanel.contains(document.activeElement)) {
      runSearch();
      return;
    }
    if (document.activeElement === ui.extraParams) readExtras();
    apply();
  });

  for (const radio of ui.form.querySelectorAll('input[name="view"]')) {
    radio.addEventListener("change", () => setView(radio.value));
  }

  ui.product.addEventListener("change", async () => {
    takeOver("bands", "expression"); // another product's band names
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
  ui.pixelSelection.addEventListener("change", () => {
    takeOver("pixel_selection");
    applySoon();
  });
  ui.order.addEventListener("change", () => {
    takeOver("sortby");
    applySoon();
  });
  ui.cloudMask.addEventListener("change", () => {
    takeOver("cloud_mask");
    applySoon();
  });
  ui.preset.addEventListener("change", () => {
    usePreset(ui.preset.value);
    applySoon();
  });
  /** The typed "more parameters" (a query string) become the extras. */
  function readExtras() {
    const text = ui.extraParams.value.trim().replace(/^\?/, "");
    state.extras = new URLSearchParams(text);
    for (const key of PAGE_ONLY) state.extras.delete(key);
    showExtras();
  }

  ui.extraParams.addEventListener("change", () => {
    readExtras();
    applySoon();
  });
  ui.basemap.addEventListener("change", () => {
    showBasemap();
    writeFragment();
  });

  map.on("click", (event) => {
    if (!drawing.armed && !seriesClick(event.latlng)) showPoint(event.latlng);
  });
  map.on("moveend", () => {
    writeFragment();
    showDownloads();
  });

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
      takeOver("bands", "expression");
      showMode();
      applySoon();
    });
  }

  for (const select of [ui.bandR, ui.bandG, ui.bandB]) {
    select.addEventListener("change", () => {
      takeOver("bands", "expression");
      applySoon();
    });
  }
  ui.colormap.addEventListener("change", () => {
    takeOver("colormap_name", "colormap");
    applySoon();
  });

  function showScaling({ focus = false } = {}) {
    const custom = ui.scaling.value === "custom";
    ui.customScalingGroup.hidden = !custom;
    if (custom) {
      if (!ui.customScaling.value) ui.customScaling.value = displayRangeGuess();
      if (focus) ui.customScaling.focus();
    }
  }

  ui.scaling.addEventListener("change", () => {
    takeOver("scaling");
    showScaling({ focus: true });
    applySoon();
  });

  // text fields apply on Enter (form submit) or when they lose focus after an edit
  ui.expression.addEventListener("change", () => {
    takeOver("bands", "expression");
    applySoon();
  });
  ui.customScaling.addEventListener("change", () => {
    takeOver("scaling");
    applySoon();
  });

  function showOpacity() {
    const value = Number(ui.opacity.value);
    ui.opacityValue.textContent = `${Math.round(value * 100)}%`;
    if (state.layer) state.layer.setOpacity(value);
  }

  ui.opacity.addEventListener("input", showOpacity);
  ui.opacity.addEventListener("change", writeFragment);

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
    readFragment();
    showOpacity();
    showBasemap();
    try {
      const colormaps = loadColormaps();
      loadParcelLayers();
      if (!(await loadProducts())) return;
      await colormaps;
      if (INITIAL_SEARCH) {
        await openSearch(INITIAL_SEARCH);
        return;
      }
      let initial = null;
      if (INITIAL_IMAGE) initial = await getJSON(`/images/${idPath(INITIAL_IMAGE)}`);
      selectProduct(initial ? initial.product_id : state.products[0].id);
      restoreRendering(INITIAL_QUERY, { mosaic: false });
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
  window.tileserverViewer = { map, state, apply, runSearch, presetsOf, series };
  start();
})();
