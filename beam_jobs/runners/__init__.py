"""Beam runners fcnseg corrects or adds; the job's `--runner NAME` resolves through RUNNERS."""

# Short names Beam 2.77 does not know (DaskRunner is missing from its ALL_KNOWN_RUNNERS,
# apache/beam#24578) or whose Beam class loses data (docs/beam.md, "Dask").
RUNNERS = {"DaskRunner": "beam_jobs.runners.dask.DaskRunner"}


def resolve(name):
    """The runner `--runner` should load: our class path for names in RUNNERS, else `name`."""
    return RUNNERS.get(name, name)


# Runners whose workers are processes of this machine: a server this machine reaches, they
# reach (and one it cannot reach, they cannot).
LOCAL = (None, "DirectRunner", "BundleBasedDirectRunner", "SwitchingDirectRunner",
         "PrismRunner")


def is_local(name) -> bool:
    return name in LOCAL
