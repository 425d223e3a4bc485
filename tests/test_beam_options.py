"""Options the Beam job does not know go to Beam untouched: no prefix matching."""
from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions

from beam_jobs import segment


def test_dataflow_labels_reach_beam_not_labels_dir():
    # Dataflow's --labels (GoogleCloudOptions) is a prefix of our --labels-dir; with argparse's
    # default abbreviation matching it was silently taken as --labels-dir team=vision.
    args, beam_args = segment.build_parser().parse_known_args(
        ["--input", "in", "--output", "out", "--labels", "team=vision", "--runner", "Direct"])
    assert args.labels_dir is None
    assert beam_args == ["--labels", "team=vision", "--runner", "Direct"]
    assert PipelineOptions(beam_args).view_as(GoogleCloudOptions).labels == ["team=vision"]


def test_no_option_of_ours_is_abbreviated():
    args, beam_args = segment.build_parser().parse_known_args(
        ["--input", "in", "--output", "out", "--model", "m", "--batch", "2"])
    assert args.model_dir is None and args.batch_size == 8
    assert beam_args == ["--model", "m", "--batch", "2"]
