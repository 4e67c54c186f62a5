"""C3D features of video files, in the benchmark's on-disk layout.

  python -m vreloc_jax.features --videos=DIR_OR_FILES --weights=FILE [--pca=FILE] \
      [--mean=FILE] --out=DIR [--clip_batch=16]

``--videos``: video files and directories of them (comma-separated; a directory's mp4, webm,
mkv, avi, … files). A video's id is its file name without suffix and ``v_`` prefix. The
output (`vreloc_jax.features.store`): ``DIR/sub_activitynet_v1-3.c3d.hdf5`` (one row every
8 frames, as ActivityNet's), ``DIR/length.json`` and ``DIR/extractor.json``; every command
of the project reads DIR as it reads the benchmark's features.

A progress line shows clips done, clips/s and the time left. Rerunning the same command
skips the videos already done, also after an interruption. A video that cannot be read is
named and skipped; the others are written. The summary counts the videos extracted, already
done and failed; the exit status is 1 when one failed.
"""

from __future__ import annotations

import sys
import time

from absl import app
from absl import flags

from vreloc_jax import cli

PROGRAM = "vreloc_jax.features"
FLAGS = flags.FLAGS


def define_flags() -> None:
  from vreloc_jax.features import extractor  # pylint: disable=g-import-not-at-top
  flags.DEFINE_list("videos", None, "Video files and/or directories of them.", required=True)
  flags.DEFINE_string("out", None, "Output directory (created; resumable).", required=True)
  extractor.define_flags()


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError("Too many command-line arguments.")
  # pylint: disable=g-import-not-at-top  (jax only once the flags are good)
  from vreloc_jax import distributed
  from vreloc_jax.features import extractor as extractor_lib
  from vreloc_jax.features import progress as progress_lib
  from vreloc_jax.features import store as store_lib
  from vreloc_jax.features import video
  distributed.quiet_library_logs()
  distributed.enable_compilation_cache()
  with cli.one_line_errors(PROGRAM):
    paths = video.find_videos(FLAGS.videos)
    extractor = extractor_lib.from_flags(FLAGS)
    out = store_lib.OutputDir(FLAGS.out, extractor.settings)
    done = out.done()
    todo = [p for p in paths if video.video_id(p) not in done]
    skipped = len(paths) - len(todo)
    print(f"{len(paths)} videos, {skipped} already done; features: {extractor.describe()}",
          flush=True)
    failed: dict[str, str] = {}
    infos = {}
    for path in todo:
      try:
        infos[path] = video.probe(path)
      except ValueError as e:
        failed[path] = str(e)
        print(f"skipped: {e}", file=sys.stderr, flush=True)
    progress = progress_lib.Progress(sum(video.num_clips(i.frames) for i in infos.values()))
    extracted = 0
    start = time.monotonic()
    try:
      for k, (path, info) in enumerate(infos.items()):
        progress.update(label=f"video {k + 1}/{len(infos)} {path}")
        try:
          rows, n_frames = extractor.video(path, on_batch=progress.update)
          if not len(rows):
            raise ValueError(f"video {path} has {n_frames} frames, fewer than the "
                             f"{video.CLIP_FRAMES} of one clip")
        except ValueError as e:
          failed[path] = str(e)
          progress.close()
          print(f"skipped: {e}", file=sys.stderr, flush=True)
          continue
        out.save(video.video_id(path), rows, {
            "n_frames": n_frames, "n_feat": video.num_steps(n_frames), "rows": len(rows),
            "fps": info.fps, "video": path})
        extracted += 1
    except KeyboardInterrupt:
      progress.close()
      total = out.publish()
      raise cli.error(PROGRAM, f"interrupted after {extracted} videos ({total} in {FLAGS.out}); "
                      "rerun the same command to go on") from None
    progress.close()
    total = out.publish()
    seconds = time.monotonic() - start
    print(f"{len(paths)} videos: {extracted} extracted, {skipped} already done (skipped), "
          f"{len(failed)} failed; {progress.done} clips in {seconds:.0f} s "
          f"({progress.rate:.1f} clips/s); {total} videos in {FLAGS.out}")
    if failed:
      raise ValueError(f"{len(failed)} of {len(paths)} videos failed: "
                       + "; ".join(failed.values()))


if __name__ == "__main__":
  define_flags()
  cli.run(main, PROGRAM)
