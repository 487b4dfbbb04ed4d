"""``msfer report VIDEO --out DIR``: an HTML report of the emotions shown by each face in a video.

DIR gets ``report.html``, one ``face_<track>.jpg`` per tracked face (a thumbnail of the face
at its best moment: good quality first, then the detector's score, then size, so the faces of
the table can be matched to people), one ``timeline_<track>.png`` per tracked face (the 7
probabilities over time, stacked, under a band of what each moment reads as; a face seen
in a single processed frame gets a stacked bar at that moment), ``shares.png`` (the share
of processed frames in which each emotion was the face's label, per face) and
``frames.jsonl`` (the raw per-frame results, as ``msfer predict --out`` writes them).

The probabilities are the model's, calibrated when the model is (a bundled model's are:
its logits are calibrated inside the network), smoothed over time per face (``--smooth``).
A moment reads as its label (by the ``--decision`` rule) unless the label's probability is
below ``--uncertain-below``: then it is **uncertain**, neither in an emotion's share nor in
"most often" (a face whose every moment is uncertain shows its most frequent label there,
marked "(uncertain)"). With calibrated probabilities a label of probability p is right about p of the
time, so the default 0.5 marks the moments whose label is more likely wrong than right.
A face of low quality (:func:`msfer.faces.quality.face_quality`) is marked **low
quality** instead (default), or with ``--min-quality good`` left out of the report. The
report names the model and states its calibration figures (held out, and on each other validation set it was
judged on), or that its probabilities are uncalibrated.
Times are the video's own frame timestamps (:mod:`msfer.inference.video`). Each file is replaced whole (written beside
it and renamed); a DIR where one of them would be the video itself is refused. The plots of an
earlier report in DIR that this one does not draw (a face it no longer has) are removed, so the
folder never mixes two reports; only files that the earlier ``report.html`` shows are
(:func:`stale_plots`). The report says plainly that it is a research aid, not a diagnosis.
"""
from __future__ import annotations

import html
import re
import sys
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..errors import MsferError
from ..faces.crop import pixel_window
from ..files import atomic_output, write_text, writing
from ..labels import EMOTIONS
from ..outputs import InputFiles, printable
from .recognizer import EmotionRecognizer
from .results import ResultWriter
from .video import VideoFrame, open_video, predict_video

DISCLAIMER_LEAD = "This report is a research aid, not a diagnosis."  # stated once, in bold on the page
DISCLAIMER = (
    f"{DISCLAIMER_LEAD} It shows what a neural network trained on web, posed and "
    "film photos reads from facial expressions; expressions do not reliably reveal what a person feels, "
    "the network makes mistakes (more so for some people, faces, lighting and cultures than others), and "
    "nothing here should be used to make decisions about a person."
)
EMOTION_COLORS = {"angry": "#d62728", "disgust": "#8c564b", "fear": "#9467bd", "happy": "#ffbf00",
                  "sad": "#1f77b4", "surprise": "#ff7f0e", "neutral": "#9e9e9e"}
UNCERTAIN, LOW_QUALITY = "uncertain", "low quality"
# What a moment of a face can read as: an emotion, or neither.
STATES = (*EMOTIONS, UNCERTAIN, LOW_QUALITY)
STATE_COLORS = {**EMOTION_COLORS, UNCERTAIN: "#ffffff", LOW_QUALITY: "#000000"}
# With calibrated probabilities, below 0.5 a label is more likely wrong than right (docs/report.md).
DEFAULT_UNCERTAIN_BELOW = 0.5


@dataclass
class TrackSummary:
    """The processed frames of one tracked face: times, probabilities (T x 7) and what each moment reads as.

    ``states`` holds, per moment, the label, ``"uncertain"`` or ``"low quality"`` (see the module docstring).
    """

    track_id: int
    times: list[float] = field(default_factory=list)
    probs: list[list[float]] = field(default_factory=list)
    states: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)  # each moment's label, uncertain or not
    thumbnail: np.ndarray | None = None  # H x W x 3 uint8 RGB: the face at its best moment

    def shares(self) -> dict[str, float]:
        """Fraction of this face's frames in each state (the emotions, then uncertain and low quality)."""
        counts = Counter(self.states)
        return {name: counts[name] / len(self.states) for name in STATES}

    def most_often(self) -> str:
        """The emotion this face's moments most often read as; where every moment was uncertain, the most frequent
        label followed by " (uncertain)"; "none (low quality)" where every moment was of low quality."""
        counts = Counter(state for state in self.states if state in EMOTIONS)
        if counts:
            return counts.most_common(1)[0][0]
        unsure = Counter(label for label, state in zip(self.labels, self.states) if state == UNCERTAIN)
        return f"{unsure.most_common(1)[0][0]} (uncertain)" if unsure else "none (low quality)"


def moment_state(face, uncertain_below: float) -> str:
    """What one face at one moment reads as: ``"low quality"``, ``"uncertain"`` or its label."""
    if face.quality == "low":
        return LOW_QUALITY
    return UNCERTAIN if face.confidence < uncertain_below else face.label


def summarise_tracks(frames: list[VideoFrame], uncertain_below: float = DEFAULT_UNCERTAIN_BELOW,
                     min_quality: str = "low") -> list[TrackSummary]:
    """Per-track summaries of the processed frames, in order of first appearance.

    ``min_quality="good"`` leaves the low-quality moments out; a face with no moment left has no track.
    """
    tracks: dict[int, TrackSummary] = {}
    for frame in frames:
        for face in frame.faces:
            if min_quality == "good" and face.quality == "low":
                continue
            track = tracks.setdefault(face.track_id, TrackSummary(face.track_id))
            track.times.append(frame.time)
            track.probs.append([face.probs[name] for name in EMOTIONS])
            track.states.append(moment_state(face, uncertain_below))
            track.labels.append(face.label)
    return list(tracks.values())


def calibration_sentence(calibration: dict | None) -> str:
    """A few plain sentences (text, not HTML) on how far the model's probabilities can be taken at their word:
    on the calibration set's held-out half and, when the model was judged on a suite, on each other set of it."""
    if not calibration:
        return ("This model's probabilities are not calibrated: they rank the emotions, but a probability of, "
                "say, 70% does not mean the label is right 70% of the time.")
    if "ece" not in calibration:
        return (f"This model's probabilities were calibrated ({calibration.get('method')} scaling), "
                "but no measurement of how well was recorded with it.")
    of_set = f" of {calibration['set']}" if calibration.get("set") else ""
    return (f"This model's probabilities are calibrated ({calibration.get('method')} scaling): on "
            f"{calibration.get('n', 'held-out')} validation faces{of_set} not used to calibrate it, a label given with "
            f"probability p was right about p of the time, on average within {100 * calibration['ece']:.1f} "
            f"percentage points (expected calibration error {calibration['ece']:.3f}; negative log-likelihood "
            f"{calibration['nll']:.2f}, Brier score {calibration['brier']:.2f}; lower is better for all three). "
            + ("Faces found in photos get a photo temperature on top, which softens their probabilities the more "
               "the head is turned (such faces are read less accurately), fitted on photo sets. "
               if calibration.get("photos") else "")
            + (suite_calibration_sentence(calibration["sets"]) if calibration.get("sets") else
               "On faces unlike that validation data (other cameras, poses, people) the probabilities can be "
               "further off."))


def suite_calibration_sentence(sets: dict) -> str:
    """One sentence (text) on how the probabilities held on each other validation set the model was judged on
    (:func:`msfer.engine.calibration.calibration_summary`'s ``sets``): its ECE on the faces found, and whether that
    is more than a perfectly calibrated model shows on that many faces 95% of the time (then its probabilities are
    off there)."""
    parts = []
    for name, figures in sets.items():
        faces = figures["n"] - figures.get("missed", 0)
        within = figures["ece"] <= figures["ece_floor_95"]
        verdict = ("within what a perfectly calibrated model shows on that many faces" if within else
                   f"beyond the {figures['ece_floor_95']:.3f} a perfectly calibrated model stays under")
        crossed = (" (with the photo temperature, each face scored by a fit on the set's other half)"
                   if figures.get("photo_temperature") == "cross-fitted" else "")
        parts.append(f"{figures.get('domain') or name} ({name}, {figures['n']} images, "
                     f"{100 * figures['overall_accuracy']:.0f}% right): ECE {figures['ece']:.3f} on its {faces} "
                     f"faces{crossed}, {verdict}")
    return ("On the other kinds of face it was validated on: " + "; ".join(parts) + ". Where the error is beyond "
            "that bound, take the probabilities as rankings more than as chances.")


def plot_timeline(track: TrackSummary, path: Path, duration: float | None = None) -> None:
    """The 7 probabilities of one face over time, stacked to 1, on an axis from 0 to ``duration`` seconds.

    Above them a band shows what each moment reads as (its label's colour; white with hatching
    for uncertain, black for low quality), each moment until the next one. A face seen at a
    single moment (a one-frame video, or one processed frame) has no area to fill: it is drawn
    as a stacked bar at that moment, 3% of the axis wide.
    """
    import matplotlib.pyplot as plt

    figure, (band, axes) = plt.subplots(2, 1, figsize=(9, 3.3), dpi=100, sharex=True,
                                        gridspec_kw={"height_ratios": [1, 6]})
    probs = np.asarray(track.probs).T
    colors = [EMOTION_COLORS[name] for name in EMOTIONS]
    end = max(duration or 0.0, track.times[-1])
    span = end if end > 0 else 1.0
    starts = np.asarray(track.times, dtype=np.float64)
    ends = np.append(starts[1:], starts[-1] + (np.median(np.diff(starts)) if len(starts) > 1 else 0.03 * span))
    widths = np.maximum(ends - starts, 0.003 * span)
    for state in STATES:
        chosen = [k for k, value in enumerate(track.states) if value == state]
        if chosen:
            band.broken_barh([(starts[k], widths[k]) for k in chosen], (0, 1), facecolors=STATE_COLORS[state],
                             edgecolor="#999999" if state == UNCERTAIN else "face", linewidth=0.3,
                             hatch="///" if state == UNCERTAIN else None, label=state)
    band.set(ylim=(0, 1), yticks=[])
    band.set_ylabel("reads as", rotation=0, ha="right", va="center", fontsize=8)
    title = f"face {track.track_id}"
    if len(set(track.times)) > 1:
        axes.stackplot(track.times, probs, labels=EMOTIONS, colors=colors)
    else:
        bottom = np.concatenate([[0.0], np.cumsum(probs[:, 0])[:-1]])
        axes.bar([track.times[0]] * len(EMOTIONS), probs[:, 0], bottom=bottom, width=0.03 * span, align="edge",
                 color=colors, label=EMOTIONS)
        title += f" (seen at {track.times[0]:.2f} s only)"
    axes.set(xlabel="time (s)", ylabel="probability", ylim=(0, 1), xlim=(0, span))
    band.set_title(title)
    axes.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)
    neither = [state for state in (UNCERTAIN, LOW_QUALITY) if state in track.states]
    if neither:
        handles = [handle for handle in band.get_legend_handles_labels()[0] if handle.get_label() in neither]
        band.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7, frameon=False)
    figure.tight_layout()
    with atomic_output(path) as temporary:
        figure.savefig(temporary, format="png")
    plt.close(figure)


def plot_shares(tracks: list[TrackSummary], path: Path) -> None:
    """One horizontal bar per face: the share of its frames in each state (emotion, uncertain, low quality)."""
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(9, 0.5 * len(tracks) + 1.4), dpi=100)
    names = [f"face {track.track_id}" for track in tracks]
    left = np.zeros(len(tracks))
    for state in STATES:
        share = np.array([track.shares()[state] for track in tracks])
        if state in EMOTIONS or share.any():
            axes.barh(names, share, left=left, color=STATE_COLORS[state], label=state,
                      edgecolor="#999999" if state == UNCERTAIN else None, hatch="///" if state == UNCERTAIN else None)
        left += share
    axes.set(xlabel="share of the face's frames (label; uncertain and low quality apart)", xlim=(0, 1))
    axes.invert_yaxis()
    axes.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)
    figure.tight_layout()
    with atomic_output(path) as temporary:
        figure.savefig(temporary, format="png")
    plt.close(figure)


def report_files(tracks: list[TrackSummary]) -> list[str]:
    """The names of the files a report with ``tracks`` writes into its folder."""
    return ["report.html", "frames.jsonl", "shares.png", *(f"timeline_{track.track_id}.png" for track in tracks),
            *(f"face_{track.track_id}.jpg" for track in tracks if track.thumbnail is not None)]


# The files of one face in a report folder, and the images a report's page shows (report_files).
PER_FACE_FILE = re.compile(r"timeline_\d+\.png|face_\d+\.jpg")
PLOT_SOURCE = re.compile(r'<img src="(shares\.png|timeline_\d+\.png|face_\d+\.jpg)"')
THUMBNAIL_SIDE = 96  # pixels, the longer side of a face's thumbnail
THUMBNAIL_MARGIN = 0.2  # of the face box's side, on each side


def face_rank(face) -> tuple:
    """How good a moment is for a face's thumbnail: good quality first, then the detector's score, then size."""
    return (face.quality != "low", face.score or 0.0, face.face_size or 0.0)


def face_thumbnail(image: np.ndarray, box) -> np.ndarray:
    """The face ``box`` ([x1, y1, x2, y2] pixels) of ``image`` (H x W x 3 uint8) with a margin, at most
    ``THUMBNAIL_SIDE`` pixels on its longer side."""
    import cv2

    x1, y1, x2, y2 = box
    margin = THUMBNAIL_MARGIN * max(x2 - x1, y2 - y1)
    left, top, right, bottom = pixel_window((x1 - margin, y1 - margin, x2 + margin, y2 + margin),
                                            image.shape[1], image.shape[0])
    crop = image[top:max(bottom, top + 1), left:max(right, left + 1)]
    scale = min(1.0, THUMBNAIL_SIDE / max(crop.shape[:2]))
    size = (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale)))
    return cv2.resize(np.ascontiguousarray(crop), size, interpolation=cv2.INTER_AREA)


def write_thumbnail(thumbnail: np.ndarray, path: Path) -> None:
    from PIL import Image

    with atomic_output(path) as temporary:
        Image.fromarray(thumbnail).save(temporary, format="JPEG", quality=90)


def stale_plots(out_dir: Path, tracks: list[TrackSummary]) -> list[Path]:
    """The plots of the report now in ``out_dir`` that a report with ``tracks`` would not write.

    Only those its ``report.html`` shows: a file msfer did not write (or that no report there
    names) is never among them, whatever its name.
    """
    try:
        page = (out_dir / "report.html").read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):  # no earlier report there, or not one of msfer's
        return []
    new = set(report_files(tracks)) - (set() if tracks else {"shares.png"})  # no face, no shares to plot
    return [out_dir / name for name in sorted(set(PLOT_SOURCE.findall(page)) - new) if (out_dir / name).is_file()]


def write_video_report(video: Path, frames: list[VideoFrame], out_dir: Path, settings: dict[str, object],
                       uncertain_below: float = DEFAULT_UNCERTAIN_BELOW, min_quality: str = "low",
                       calibration: dict | None = None, thumbnails: dict[int, np.ndarray] | None = None) -> Path:
    """Write the plots and ``report.html`` for the processed ``frames`` of ``video`` into ``out_dir``.

    Returns the HTML path.

    ``uncertain_below``, ``min_quality``: see the module docstring; ``calibration``: the model's
    :func:`msfer.engine.calibration.calibration_summary` (None: uncalibrated); ``thumbnails``: each
    track's face image (:func:`processed_frames` keeps them), shown in the table of faces.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    with writing(out_dir):
        out_dir.mkdir(parents=True, exist_ok=True)
    tracks = summarise_tracks(frames, uncertain_below, min_quality)
    for track in tracks:
        track.thumbnail = (thumbnails or {}).get(track.track_id)
    inputs = InputFiles([video])
    for name in report_files(tracks):
        inputs.refuse(out_dir / name, "--out")
    stale = [path for path in stale_plots(out_dir, tracks) if inputs.find(path) is None]
    duration = frames[-1].time if frames else 0.0
    for track in tracks:
        plot_timeline(track, out_dir / f"timeline_{track.track_id}.png", duration)
    if tracks:
        plot_shares(tracks, out_dir / "shares.png")
    for track in tracks:
        if track.thumbnail is not None:
            write_thumbnail(track.thumbnail, out_dir / f"face_{track.track_id}.jpg")
    with atomic_output(out_dir / "frames.jsonl") as temporary, ExitStack() as stack:
        writer = ResultWriter(temporary, stack)
        for frame in frames:
            writer.write({"source": video, "frame": frame.index, "time": frame.time, "faces": frame.faces})
    page = report_page(video, frames, tracks, settings, uncertain_below, min_quality, calibration)
    path = out_dir / "report.html"
    write_text(path, page)
    for old in stale:  # only once the new page no longer shows them
        try:
            old.unlink(missing_ok=True)
        except OSError as error:  # the new report is whole; a leftover plot is no reason to fail it
            print(f"msfer report: could not remove {printable(old)}, a plot of the earlier report: "
                  f"{error.strerror or error}", file=sys.stderr)
    return path


def report_page(video: Path, frames: list[VideoFrame], tracks: list[TrackSummary], settings: dict[str, object],
                uncertain_below: float, min_quality: str, calibration: dict | None) -> str:
    """``report.html``'s text: the disclaimer, how a moment is read, the shares plot, the table of faces (with their
    thumbnails) and the timelines, for the tracks of ``frames`` (see :func:`write_video_report`)."""
    duration = frames[-1].time if frames else 0.0
    rows = "\n".join(
        "<tr>" + "".join(f"<td>{cell}</td>" for cell in (
            (f'<img src="face_{track.track_id}.jpg" alt="face {track.track_id}" class="face"> '
             if track.thumbnail is not None else "") + str(track.track_id),
            f"{track.times[0]:.2f}", f"{track.times[-1]:.2f}", len(track.times), html.escape(track.most_often()),
            *(f"{100 * share:.0f}%" for share in track.shares().values()),
        )) + "</tr>"
        for track in tracks
    )
    columns = ("face", "first seen (s)", "last seen (s)", "frames", "most often", *STATES)
    header = "".join(f"<th>{name}</th>" for name in columns)
    left_out = sum(face.quality == "low" for frame in frames for face in frame.faces) if min_quality == "good" else 0
    reading = (
        f"<p>Each moment reads as its label (decision rule: {html.escape(str(settings.get('decision', 'argmax')))}) "
        f"unless the label's probability is below {uncertain_below:.2f}: then it is <em>uncertain</em>. "
        + ("Faces of low quality (by default small, blurred or turned away) are "
           + (f"left out ({left_out} face-moments)." if min_quality == "good" else "marked <em>low quality</em>.")
           ) + f"</p>\n<p>{html.escape(calibration_sentence(calibration))}</p>"
    )
    timelines = "\n".join(
        f'<img src="timeline_{track.track_id}.png" alt="emotion timeline of face {track.track_id}">' for track in tracks
    )
    settings_text = ", ".join(f"{key}: {html.escape(printable(str(value)))}" for key, value in settings.items())
    body = (
        f"<h2>Share of time in each emotion</h2>\n<img src=\"shares.png\" alt=\"share of time per emotion\">\n"
        f"<h2>Faces</h2>\n<table>\n<tr>{header}</tr>\n{rows}\n</table>\n<h2>Emotion timelines</h2>\n{timelines}"
        if tracks else "<p><strong>No face was found in the processed frames.</strong></p>"
    )
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>msfer report: {html.escape(printable(video.name))}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1000px; margin: 2em auto; color: #222; }}
.notice {{ border: 2px solid #c62828; background: #fff3f3; padding: 0.8em 1em; }}
table {{ border-collapse: collapse; }} td, th {{ border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }}
img {{ max-width: 100%; display: block; margin: 0.5em 0; }}
img.face {{ display: inline-block; height: 64px; margin: 0; vertical-align: middle; }}
</style></head><body>
<h1>Facial emotion report: {html.escape(printable(video.name))}</h1>
<p class="notice">{DISCLAIMER.replace(DISCLAIMER_LEAD, f"<strong>{DISCLAIMER_LEAD}</strong>", 1)}</p>
<p>{len(frames)} processed frames, the last at {duration:.1f} s; {len(tracks)} tracked face(s). {settings_text}.</p>
{reading}
{body}
</body></html>
"""
    return page


def processed_frames(recognizer: EmotionRecognizer, path: Path, every: int = 1,
                     smooth: float = 0.0) -> tuple[list[VideoFrame], str | None, dict[int, np.ndarray]]:
    """The processed frames of the video at ``path`` (every ``every``-th, tracked and smoothed), without their
    images: only the results are kept, so memory stays flat on long videos. Also, for a file whose decoding
    stopped early (truncated or damaged), what was missed (:meth:`VideoSource.shortfall`), else None; and
    each track's thumbnail (:func:`face_thumbnail` at its best moment by :func:`face_rank`)."""
    with (open_video(path) as video,
          tqdm(total=video.frame_count, desc=printable(Path(path).name), unit="frame") as progress):
        if not getattr(video, "timed", True):
            raise MsferError(f"{printable(path)}: the pages of a multi-page image have no times to plot; "
                             "msfer predict reads them page by page")
        frames, thumbnails, best = [], {}, {}
        for frame in predict_video(recognizer, video, every, smooth):
            if frame.processed:
                for face in frame.faces:
                    if face.track_id not in best or face_rank(face) > best[face.track_id]:
                        best[face.track_id] = face_rank(face)
                        thumbnails[face.track_id] = face_thumbnail(frame.image, face.box)
                frame.image = None
                frames.append(frame)
            progress.update()
        return frames, video.shortfall(), thumbnails
