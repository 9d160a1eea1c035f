"""`ingest slides --wsi-dir` and extract's records: each slide's raw slide and thumbnail, so `serve` can show them."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import write_trident
from service_support import cli, write_stand_in_wsi

from threads_search.atlas.schema import FORMAT_VERSION
from threads_search.atlas.slide_images import IMAGE_COLUMNS, slide_images
from threads_search.atlas.store import open_atlas


@pytest.fixture
def atlas(tmp_path, feature_folder):
    path = tmp_path / "atlas"
    assert cli("init", path).exit_code == 0
    return path


def _images(atlas, slide_id):
    with open_atlas(atlas, read_only=True) as opened:
        return slide_images(opened, slide_id)


def test_raw_slides_are_paired_by_stem_anywhere_under_the_folder(atlas, feature_folder, tmp_path):
    slides = tmp_path / "wsi"
    (slides / "case-a").mkdir(parents=True)
    write_stand_in_wsi(slides / "case-a" / "P0-S0.tiff", 0, size=(512, 384))
    write_stand_in_wsi(slides / "P1-S1.tif", 1, size=(512, 384))
    (slides / "notes.txt").write_text("not a slide")
    outcome = cli("ingest", "slides", atlas, feature_folder, "--wsi-dir", slides)
    assert outcome.exit_code == 0, outcome.output
    assert "--wsi-dir" in outcome.output and "4 of 6 slide(s) have no raw slide there (first: 'P0-S1')" in outcome.output
    assert _images(atlas, "P0-S0").wsi_path == (slides / "case-a" / "P0-S0.tiff").resolve()
    assert _images(atlas, "P1-S1").wsi_path == (slides / "P1-S1.tif").resolve()
    assert _images(atlas, "P2-S0").wsi_path is None and _images(atlas, "P2-S0").thumbnail_path is None


def test_a_second_ingest_of_unchanged_files_adds_the_pictures_and_never_clears_them(atlas, feature_folder, tmp_path):
    assert cli("ingest", "slides", atlas, feature_folder).exit_code == 0
    slides = tmp_path / "wsi"
    slides.mkdir()
    write_stand_in_wsi(slides / "P2-S1.svs.tiff", 2, size=(256, 256))  # stem 'P2-S1.svs': no match
    write_stand_in_wsi(slides / "P2-S1.tiff", 3, size=(256, 256))
    outcome = cli("ingest", "slides", atlas, feature_folder, "--wsi-dir", slides)
    assert outcome.exit_code == 0 and "6 unchanged" in outcome.output
    assert _images(atlas, "P2-S1").wsi_path == (slides / "P2-S1.tiff").resolve()
    assert cli("ingest", "slides", atlas, feature_folder).exit_code == 0  # no --wsi-dir: the record stays
    assert _images(atlas, "P2-S1").wsi_path == (slides / "P2-S1.tiff").resolve()


def test_unreadable_or_ambiguous_raw_slides_are_refused_and_change_nothing(atlas, feature_folder, tmp_path):
    slides = tmp_path / "wsi"
    (slides / "x").mkdir(parents=True)
    (slides / "P0-S0.svs").write_bytes(b"not a slide at all")
    outcome = cli("ingest", "slides", atlas, feature_folder, "--wsi-dir", slides)
    assert outcome.exit_code == 2 and "P0-S0.svs: OpenSlide cannot read this file (paired with slide 'P0-S0'" in outcome.output
    with open_atlas(atlas, read_only=True) as opened:
        assert opened.sql("SELECT count(*) FROM slides").fetchone()[0] == 0
    (slides / "P0-S0.svs").unlink()
    write_stand_in_wsi(slides / "P0-S0.tiff", 0, size=(256, 256))
    write_stand_in_wsi(slides / "x" / "P0-S0.tif", 1, size=(256, 256))
    outcome = cli("ingest", "slides", atlas, feature_folder, "--wsi-dir", slides)
    assert outcome.exit_code == 2 and "share the stem 'P0-S0'; keep one" in outcome.output
    assert "no such folder" in cli("ingest", "slides", atlas, feature_folder, "--wsi-dir", tmp_path / "none").output


def test_extract_records_its_raw_slide_and_thumbnail_for_ingest(tmp_path):
    from threads_search.readers.patch_features import inspect_feature_file

    wsi = write_stand_in_wsi(tmp_path / "tissue.tiff", 4, size=(2048, 1536))
    assert cli("extract", wsi, "--out", tmp_path / "features", "--quiet").exit_code == 0
    attrs = inspect_feature_file(tmp_path / "features" / "tissue.h5").attrs
    assert attrs["wsi_path"] == str(wsi.resolve())
    atlas = tmp_path / "atlas"
    assert cli("init", atlas).exit_code == 0
    assert cli("ingest", "slides", atlas, tmp_path / "features").exit_code == 0
    images = _images(atlas, "tissue")
    assert images.wsi_path == wsi.resolve()
    assert images.thumbnail_path == (tmp_path / "features" / "thumbnails" / "tissue.png").resolve()
    assert images.thumbnail_downsample == pytest.approx(attrs["thumbnail_downsample"])


def test_an_atlas_of_format_1_gets_the_image_columns_from_its_next_writer(atlas, feature_folder, tmp_path):
    """An atlas written before format 2 (no image columns, no checksums) is migrated on its next write."""
    with open_atlas(atlas) as opened:
        for column in IMAGE_COLUMNS:
            opened.sql(f"ALTER TABLE slides DROP COLUMN {column}")
        for table in ("embeddings", "indexes", "profile_batches"):
            opened.sql(f"ALTER TABLE {table} DROP COLUMN checksum")
        opened.sql("ALTER TABLE embeddings DROP COLUMN min_vid")
        opened.sql("ALTER TABLE embeddings DROP COLUMN max_vid")
        opened.sql("DROP TABLE patch_indexes")
        opened.sql("DROP TABLE index_shards")
        opened.set_meta("format_version", "1")
        opened.publish()
    import pytest as _pytest

    from threads_search.errors import AtlasError

    with _pytest.raises(AtlasError, match="atlas format 1 is older than"):
        open_atlas(atlas, read_only=True).close()  # readers never migrate; they say what does
    slides = tmp_path / "wsi"
    slides.mkdir()
    write_stand_in_wsi(slides / "P0-S0.tiff", 0, size=(256, 256))
    rng = np.random.default_rng(5)
    extra = write_trident(tmp_path / "EXTRA.h5", rng.normal(size=(10, 768)).astype(np.float16))
    assert cli("ingest", "slides", atlas, feature_folder, extra, "--wsi-dir", slides).exit_code == 0
    with open_atlas(atlas, read_only=True) as opened:
        assert opened.meta("format_version") == str(FORMAT_VERSION) and opened.sql("SELECT count(*) FROM slides").fetchone()[0] == 7
    assert _images(atlas, "P0-S0").wsi_path == (slides / "P0-S0.tiff").resolve()
