"""Reading the raw observer files and the consensus events, real and broken."""

from __future__ import annotations

import hashlib

import pytest

from monai_emotion.data.annotations import (
    CONSENSUS_DEFECT_COLUMNS,
    EMOTION_TOKENS,
    OBSERVER_COLUMNS,
    Episode,
    find_observer_files,
    read_consensus_events,
    read_observer_file,
    write_observer_file,
)
from monai_emotion.errors import AnnotationError

HEADER = ",".join(OBSERVER_COLUMNS)


def test_every_real_row_parses(real_annotations):
    files = sorted((real_annotations / "raw").glob("*.csv"))
    assert len(files) == 12
    for path in files:
        data_lines = [ln for ln in path.read_text().splitlines()[1:] if ln.strip()]
        episodes = read_observer_file(path)
        assert len(episodes) == len(data_lines), path.name
        assert all(t in EMOTION_TOKENS for ep in episodes for t in ep.emotions)
        assert all(ep.end >= ep.start for ep in episodes)


def test_real_files_hold_the_awkward_cases(real_annotations):
    episodes = [ep for p in find_observer_files(real_annotations, "all") for ep in read_observer_file(p)]
    assert any(len(ep.emotions) > 1 for ep in episodes), "multi-token emotion fields"
    assert any(not ep.emotions for ep in episodes), "empty emotion fields"
    assert any(ep.start != int(ep.start) for ep in episodes), "fractional start times"
    tokens = {t for ep in episodes for t in ep.emotions}
    assert tokens == set(EMOTION_TOKENS)


def test_observer_sets(real_annotations):
    assert len(find_observer_files(real_annotations, "av")) == 9
    assert len(find_observer_files(real_annotations, "ao")) == 3
    assert len(find_observer_files(real_annotations / "raw", "all")) == 12
    two = find_observer_files(real_annotations, "raw/av1o01.csv,raw/ao1o02.csv")
    assert [p.name for p in two] == ["av1o01.csv", "ao1o02.csv"]


def test_consensus_events_parse_and_defect_columns_are_zero(real_annotations):
    paths = sorted((real_annotations / "researchcut").glob("*.tsv")) + sorted(
        real_annotations.glob("segments-*/*.tsv")
    )
    # the whole movie for AV and AO, and each of the 8 runs for both
    assert len(paths) == 2 + 2 * 8, [str(p.relative_to(real_annotations)) for p in paths]
    for path in paths:
        frame = read_consensus_events(path)
        n_lines = len([ln for ln in path.read_text().splitlines()[1:] if ln.strip()])
        assert len(frame) == n_lines
        assert (frame["end"] >= frame["onset"]).all()
        for column in CONSENSUS_DEFECT_COLUMNS:
            assert (frame[column] == 0).all(), (path.name, column)


def test_write_read_round_trip(tmp_path):
    episodes = [
        Episode(10.5, 20.0, "FORREST", "HIGH", "NEG", "SELF", ("FEAR", "HATE"), ("FACE",), ("SCENEEND",)),
        Episode(12.0, 13.0, "JENNY", "LOW", "POS", "OTHER", (), (), ()),
    ]
    path = write_observer_file(tmp_path / "av1o01.csv", episodes)
    back = read_observer_file(path)
    assert [(e.start, e.end, e.emotions, e.oncue) for e in back] == [
        (e.start, e.end, e.emotions, e.oncue) for e in episodes
    ]


BAD_FILES = {
    "unknown_token": (HEADER + "\n1,5,X,LOW,POS,SELF,JOYFUL,,\n", "unknown emotion token", 2),
    "malformed_row": (HEADER + "\n1,5,X,LOW,POS,SELF,FEAR\n", "malformed row", 2),
    "end_before_start": (HEADER + "\n1,5,X,LOW,POS,SELF,FEAR,,\n9,5,X,LOW,POS,SELF,FEAR,,\n", "ends before", 3),
    "non_numeric_time": (HEADER + "\nabc,5,X,LOW,POS,SELF,FEAR,,\n", "not a number", 2),
    "empty_file": ("", "empty", None),
    "missing_column": ("start,end,character,arousal,valence,direction,emotion,oncue\n1,2,X,LOW,POS,SELF,,\n",
                       "missing column", 1),
    "wrong_delimiter": (HEADER.replace(",", ";") + "\n1;5;X;LOW;POS;SELF;FEAR;;\n", "not comma-separated", 1),
    "duplicated_header": (HEADER + "\n1,5,X,LOW,POS,SELF,FEAR,,\n" + HEADER + "\n", "header row is repeated", 3),
    "bad_arousal": (HEADER + "\n1,5,X,MEDIUM,POS,SELF,FEAR,,\n", "unknown arousal", 2),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_observer_files_name_file_and_line(tmp_path, case):
    text, phrase, line = BAD_FILES[case]
    path = tmp_path / "av1o01.csv"
    path.write_text(text)
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(AnnotationError) as info:
        read_observer_file(path)
    message = str(info.value)
    assert str(path) in message and phrase in message and "fix:" in message
    if line is not None:
        assert f"line {line}" in message
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before


def test_empty_annotation_folder(tmp_path):
    with pytest.raises(AnnotationError, match="no 'av' observer files") as info:
        find_observer_files(tmp_path, "av")
    assert str(tmp_path) in str(info.value)
