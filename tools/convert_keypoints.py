#!/usr/bin/env python3
"""Convert keypoints from the original system's formats into vidtrain's layout.

vidtrain reads, per video and view, one float32 array `[frames, joints, 2|3]` saved as
`<keypoint_path>/<view>/<video stem>.npy` (or a folder of per-frame files, see docs).

Modes:
  sam3d     A folder of per-frame SAM-3D-body files `{frame:06}_sam3d_body.npz` (70 joints x xyz)
            -> one `.npy` [frames, 70, 3]. Missing or unreadable frames become zeros (reported).
  mmaction  An MMAction2 pose pickle (dict with "annotations", each with "frame_dir",
            "total_frames", "keypoint" [persons, frames, joints, 2] and optionally
            "keypoint_score") -> one `.npy` per video, [frames, joints, 3] = (x, y, score) of the
            first person.

Examples:
  python3 tools/convert_keypoints.py sam3d  --input kpts/front/person_01_night_high --output keypoints/front/person_01_night_high.npy
  python3 tools/convert_keypoints.py mmaction --input poses.pkl --output keypoints/front/
  python3 tools/convert_keypoints.py --self-test
"""

import argparse
import pickle
import re
import sys
import tempfile
from pathlib import Path

import numpy as np

FRAME_FILE = re.compile(r"^(\d{6})_.*\.npz$")
SAM3D_JOINTS = 70


def sam3d_array(npz_path):
    """The [70, 3] keypoints of one SAM-3D-body file (first person if several)."""
    with np.load(npz_path, allow_pickle=False) as archive:
        name = "pred_keypoints_3d" if "pred_keypoints_3d" in archive.files else archive.files[0]
        array = np.asarray(archive[name], dtype=np.float32)
    while array.ndim > 2:
        array = array[0]
    if array.shape != (SAM3D_JOINTS, 3):
        raise ValueError(f"{npz_path}: expected [{SAM3D_JOINTS}, 3] keypoints, found {list(array.shape)}")
    return array


def convert_sam3d(input_dir, output, frames=None):
    files = {int(m.group(1)): p for p in Path(input_dir).iterdir() if (m := FRAME_FILE.match(p.name))}
    if not files and frames is None:
        raise SystemExit(f"no {{frame:06}}_*.npz files in {input_dir}")
    n_frames = frames if frames is not None else max(files) + 1
    out = np.zeros((n_frames, SAM3D_JOINTS, 3), dtype=np.float32)
    missing = 0
    for frame in range(n_frames):
        path = files.get(frame)
        if path is None:
            missing += 1
            continue
        try:
            out[frame] = sam3d_array(path)
        except (OSError, ValueError) as error:
            print(f"warning: {error}; frame {frame} set to zeros", file=sys.stderr)
            missing += 1
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    np.save(output, out)
    print(f"{output}: {n_frames} frames, {missing} missing (zeros)")
    return out


def convert_mmaction(pickle_path, output_dir):
    with open(pickle_path, "rb") as handle:
        data = pickle.load(handle)
    annotations = data["annotations"] if isinstance(data, dict) else data
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for annotation in annotations:
        keypoint = np.asarray(annotation["keypoint"], dtype=np.float32)  # [persons, frames, joints, 2]
        if keypoint.ndim != 4:
            raise SystemExit(f"{annotation.get('frame_dir')}: keypoint must be [persons, frames, joints, 2|3], found {list(keypoint.shape)}")
        person = keypoint[0]
        if person.shape[-1] == 2:
            scores = annotation.get("keypoint_score")
            score = np.asarray(scores, dtype=np.float32)[0][..., None] if scores is not None else np.ones(person.shape[:-1] + (1,), np.float32)
            person = np.concatenate([person, score], axis=-1)
        total = int(annotation.get("total_frames", person.shape[0]))
        if person.shape[0] < total:
            person = np.concatenate([person, np.zeros((total - person.shape[0],) + person.shape[1:], np.float32)])
        path = output_dir / f"{Path(str(annotation['frame_dir'])).name}.npy"
        np.save(path, person[:total])
        written.append(path)
        print(f"{path}: {total} frames, {person.shape[1]} joints")
    return written


def self_test():
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        frames_dir = tmp / "sam3d"
        frames_dir.mkdir()
        for frame in (0, 1, 3):
            np.savez(frames_dir / f"{frame:06}_sam3d_body.npz", pred_keypoints_3d=np.full((1, 70, 3), frame, np.float32))
        (frames_dir / "000004_sam3d_body.npz").write_bytes(b"not a zip")
        out = convert_sam3d(frames_dir, tmp / "out" / "video.npy", frames=6)
        assert out.shape == (6, 70, 3) and out.dtype == np.float32
        assert (out[3] == 3).all() and (out[2] == 0).all() and (out[4] == 0).all() and (out[5] == 0).all()
        assert np.array_equal(np.load(tmp / "out" / "video.npy"), out)

        poses = {"annotations": [{"frame_dir": "clips/a", "total_frames": 5,
                                  "keypoint": np.ones((2, 4, 17, 2), np.float32),
                                  "keypoint_score": np.full((2, 4, 17), 0.5, np.float32)}]}
        with open(tmp / "poses.pkl", "wb") as handle:
            pickle.dump(poses, handle)
        (path,) = convert_mmaction(tmp / "poses.pkl", tmp / "mm")
        array = np.load(path)
        assert path.name == "a.npy" and array.shape == (5, 17, 3)
        assert (array[:4, :, :2] == 1).all() and (array[:4, :, 2] == 0.5).all() and (array[4] == 0).all()
    print("self-test passed")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", nargs="?", choices=["sam3d", "mmaction"])
    parser.add_argument("--input", help="per-frame folder (sam3d) or pickle file (mmaction)")
    parser.add_argument("--output", help=".npy file (sam3d) or output folder (mmaction)")
    parser.add_argument("--frames", type=int, help="sam3d: frames in the video (default: last file + 1)")
    parser.add_argument("--self-test", action="store_true", help="convert synthetic inputs and check the results")
    args = parser.parse_args()
    if args.self_test:
        self_test()
    elif args.mode == "sam3d" and args.input and args.output:
        convert_sam3d(args.input, args.output, args.frames)
    elif args.mode == "mmaction" and args.input and args.output:
        convert_mmaction(args.input, args.output)
    else:
        parser.error("give a mode with --input and --output, or --self-test")


if __name__ == "__main__":
    main()
