//! Index unit tests: Label Studio parsing and file location details.

use super::*;

#[test]
fn video_paths_come_from_uploads_urls_and_local_files() {
    assert_eq!(annotation_relative_path("/data/upload/1/a.mp4"), "a.mp4");
    assert_eq!(annotation_relative_path("http://x/y/b.mp4#t=1"), "b.mp4");
    assert_eq!(annotation_relative_path("c.mp4"), "c.mp4");
    assert_eq!(
        annotation_relative_path("/data/local-files/?d=drivers/day/person_3.mp4"),
        "drivers/day/person_3.mp4"
    );
    assert_eq!(
        annotation_relative_path("/data/local-files/?d=drivers%2Fnight%20shift%2Fp.mp4"),
        "drivers/night shift/p.mp4"
    );
}

#[test]
fn keypoints_of_an_upload_resolve_by_the_rules_of_its_video() {
    // The video `5e6f7a8b-person_07_morning.mp4` (a Label Studio upload) was found as
    // `person_07_morning.mp4`; its keypoints used to be looked up only under the prefixed
    // name and were reported missing.
    let root = std::env::temp_dir().join(format!("vidtrain-kpt-{}", std::process::id()));
    let keypoints = root.join("keypoints/front");
    let videos = root.join("videos/front");
    std::fs::create_dir_all(&keypoints).unwrap();
    std::fs::create_dir_all(&videos).unwrap();
    std::fs::write(keypoints.join("person_07_morning.npy"), b"").unwrap();
    let video = videos.join("person_07_morning.mp4");
    std::fs::write(&video, b"").unwrap();
    let relative = annotation_relative_path("/data/upload/3/5e6f7a8b-person_07_morning.mp4");
    assert_eq!(find_video(&videos, &relative), Some(video.clone()));
    assert_eq!(
        keypoint_source(&keypoints, &file_name_of(&relative), &video),
        keypoints.join("person_07_morning.npy")
    );
    // A name with the prefix on disk still wins when it is there.
    std::fs::write(keypoints.join("5e6f7a8b-person_07_morning.npy"), b"").unwrap();
    assert_eq!(
        keypoint_source(&keypoints, &file_name_of(&relative), &video),
        keypoints.join("5e6f7a8b-person_07_morning.npy")
    );
    std::fs::remove_dir_all(&root).unwrap();
    // Upload names are percent-decoded like local-files paths.
    assert_eq!(
        annotation_relative_path("/data/upload/3/5e6f7a8b-person%2007%20night.mp4"),
        "5e6f7a8b-person 07 night.mp4"
    );
}

#[test]
fn persons_are_parsed_from_file_names() {
    assert_eq!(person_of("person_07_night_high_h265.mp4"), "person_07");
    assert_eq!(person_of("ab12cd34-person_3_day.mp4"), "person_3");
    assert_eq!(person_of("clip.mp4"), "clip");
    assert_eq!(person_of("day/person_12/front.mp4"), "person_12");
}
