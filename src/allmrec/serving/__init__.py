"""Inference outside the pipeline: one artifact folder (:mod:`.artifact`, ``allmrec export``),
the trained model loaded from it (:class:`TrainedRecommender`), the HTTP server (:mod:`.app`,
``allmrec serve``) and sharded batch predictions (:mod:`.predict`, ``allmrec predict``)."""

from allmrec.serving.artifact import ArtifactError, export_run, read_manifest
from allmrec.serving.trained import TrainedRecommender

__all__ = ["ArtifactError", "TrainedRecommender", "export_run", "read_manifest"]
