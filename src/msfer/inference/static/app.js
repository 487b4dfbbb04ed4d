"use strict";
// Every address here is relative to the page (healthz, v1/predict, sample.jpg), so that the page works wherever it
// is served: at the service's root or under a reverse proxy's sub-path (msfer serve --root-path).
const EMOTIONS = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"];
const REGION_COLORS = { left_eye: "#00a0ff", right_eye: "#00a0ff", eyes: "#00a0ff", nose: "#ffc800", mouth: "#ff3ca0" };
const BOX_COLORS = { good: "#00c800", low: "#ff8c00" };
const statusLine = document.getElementById("status");
const canvas = document.getElementById("canvas");
const table = document.getElementById("table");
const decision = document.getElementById("decision");
let uncertainBelow = 0.5;  // replaced by the server's threshold (healthz) once known
let lastFile = null;

function setStatus(text, isError = false) {
  statusLine.textContent = text;
  statusLine.className = isError ? "error" : "";
}

function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, c => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

// What the service offers: its default decision rule, whether "balanced" exists, the calibration note.
const ready = fetch("healthz").then(response => response.json()).then(health => {
  uncertainBelow = health.uncertain_below ?? uncertainBelow;
  document.getElementById("uncertain-below").textContent = `${Math.round(100 * uncertainBelow)}%`;
  decision.querySelector('option[value="balanced"]').disabled = !health.balanced_decision;
  const asked = new URLSearchParams(location.search).get("decision");
  const offered = asked === "argmax" || (asked === "balanced" && health.balanced_decision);
  decision.value = offered ? asked : health.decision;
  document.getElementById("calibration").textContent = health.calibration_note || "";
}).catch(() => {});

function reading(face) {
  // "happy 83%", "uncertain (sad 41%)"; the quality is said apart from the label.
  const percent = `${Math.round(face.confidence * 100)}%`;
  return face.confidence < uncertainBelow ? `uncertain (${face.label} ${percent})` : `${face.label} ${percent}`;
}

async function analyse(file) {
  lastFile = file;
  await ready;
  setStatus(`Analysing ${file.name} ...`);
  document.body.dataset.state = "busy";
  table.hidden = true;
  const form = new FormData();
  form.append("image", file, file.name);
  form.append("decision", decision.value);
  try {
    const response = await fetch("v1/predict", { method: "POST", body: form });
    const result = await response.json();
    if (!response.ok) throw new Error(result.detail || response.statusText);
    // The words first, then the drawing, which waits for the photo to be decoded again.
    const n = result.faces.length;
    const low = result.faces.filter(f => f.quality === "low").length;
    setStatus(n ? `${n} face${n > 1 ? "s" : ""} (decision: ${result.decision}): ` +
      result.faces.map(reading).join(", ") + (low ? `; ${low} of low quality` : "") : "No face found.");
    fillTable(result);
    draw(await createImageBitmap(file, { imageOrientation: "from-image" }), result);
    document.body.dataset.state = "done";
  } catch (error) {
    setStatus(`Error: ${error.message}`, true);
    document.body.dataset.state = "error";
  }
}

function displayScale(width, height) {
  // Large photos are shown at most 900 px wide; small ones enlarged to 480 px wide (at most 8 times and 2000 px
  // tall), so that a face's label has room beside it.
  const shrink = Math.min(1, 900 / width);
  return Math.max(shrink, Math.min(480 / width, 2000 / height, 8));
}

function placeCaption(ctx, text, box, baseSize) {
  // The label's rectangle, always whole inside the canvas: above the face's box where there is room, else
  // inside its top edge; moved left from the image's right edge; its font made smaller when the image is
  // narrower than the label.
  let size = baseSize;
  ctx.font = `${size}px system-ui, sans-serif`;
  let textWidth = ctx.measureText(text).width;
  while (textWidth + 8 > canvas.width && size > 1) {
    size = Math.max(1, Math.min(size - 1, Math.floor(size * (canvas.width - 8) / textWidth)));
    ctx.font = `${size}px system-ui, sans-serif`;
    textWidth = ctx.measureText(text).width;
  }
  const width = Math.min(canvas.width, Math.ceil(textWidth) + 8);
  const height = Math.min(canvas.height, Math.ceil(size * 1.3) + 4);
  const [x1, y1] = box;
  const left = Math.min(Math.max(0, x1), canvas.width - width);
  const top = Math.min(Math.max(0, y1 - height), canvas.height - height);
  return { left, top, width, height, size, textWidth };
}

function draw(image, result) {
  // The server measures boxes on the EXIF-rotated image; scale them to the bitmap as shown.
  const scale = displayScale(image.width, image.height);
  const sx = scale * image.width / result.width, sy = scale * image.height / result.height;
  canvas.width = Math.round(image.width * scale);
  canvas.height = Math.round(image.height * scale);
  const ctx = canvas.getContext("2d");
  ctx.drawImage(image, 0, 0, canvas.width, canvas.height);
  const line = Math.max(2, canvas.width / 300);
  const fontSize = Math.round(Math.max(13, canvas.width / 45));
  const captions = [];
  result.faces.forEach((face, i) => {
    for (const [name, [x1, y1, x2, y2]] of Object.entries(face.regions)) {
      if (!(name in REGION_COLORS)) continue;
      ctx.strokeStyle = REGION_COLORS[name];
      ctx.lineWidth = line / 2;
      ctx.strokeRect(x1 * sx, y1 * sy, (x2 - x1) * sx, (y2 - y1) * sy);
    }
    const [x1, y1, x2, y2] = face.box;
    const color = BOX_COLORS[face.quality] || BOX_COLORS.good;
    ctx.strokeStyle = color;
    ctx.lineWidth = line;
    // A low-quality face gets a dashed box: its label is less often right.
    ctx.setLineDash(face.quality === "low" ? [3 * line, 2 * line] : []);
    ctx.strokeRect(x1 * sx, y1 * sy, (x2 - x1) * sx, (y2 - y1) * sy);
    ctx.setLineDash([]);
    const text = `${i + 1}: ${reading(face)}${face.quality === "low" ? ", low quality" : ""}`;
    const place = placeCaption(ctx, text, [x1 * sx, y1 * sy], fontSize);
    ctx.fillStyle = color;
    ctx.fillRect(place.left, place.top, place.width, place.height);
    ctx.fillStyle = "#000";
    ctx.textBaseline = "top";
    ctx.fillText(text, place.left + 4, place.top + 2);
    captions.push({ text, ...place });
  });
  // Where each label was drawn, for whoever checks the drawing (and the page's tests).
  canvas.dataset.captions = JSON.stringify(captions);
}

function fillTable(result) {
  const degrees = value => value == null ? "" : `${Math.round(value)}°`;
  table.innerHTML = '<tr><th>face</th><th class="text">reading</th><th class="text">quality</th>' +
    "<th>size (px)</th><th>sharpness</th><th>roll</th><th>yaw</th>" +
    EMOTIONS.map(e => `<th>${e}</th>`).join("") + "</tr>" +
    result.faces.map((face, i) => `<tr class="${face.quality === "low" ? "low" : ""}"><td>${i + 1}</td>` +
      `<td class="text${face.confidence < uncertainBelow ? " uncertain" : ""}">${escapeHtml(reading(face))}</td>` +
      `<td class="text">${escapeHtml(face.quality ?? "")}` +
      `${face.quality_issues && face.quality_issues.length ? ": " + escapeHtml(face.quality_issues.join(", ")) : ""}</td>` +
      `<td>${face.face_size == null ? "" : Math.round(face.face_size)}</td>` +
      `<td>${face.sharpness == null ? "" : face.sharpness.toFixed(1)}</td>` +
      `<td>${degrees(face.roll)}</td><td>${degrees(face.yaw)}</td>` +
      EMOTIONS.map(e => `<td>${(100 * face.probs[e]).toFixed(1)}%</td>`).join("") + "</tr>").join("");
  table.hidden = result.faces.length === 0;
}

decision.addEventListener("change", () => { if (lastFile) analyse(lastFile); });
document.getElementById("file").addEventListener("change", event => {
  if (event.target.files.length) analyse(event.target.files[0]);
});
const drop = document.getElementById("drop");
drop.addEventListener("dragover", event => { event.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", event => {
  event.preventDefault();
  drop.classList.remove("over");
  if (event.dataTransfer.files.length) analyse(event.dataTransfer.files[0]);
});

if (new URLSearchParams(location.search).has("demo")) {
  fetch("sample.jpg")
    .then(response => response.blob())
    .then(blob => analyse(new File([blob], "sample.jpg", { type: "image/jpeg" })));
}
