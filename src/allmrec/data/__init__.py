from allmrec.data.dataset import SequenceDataset

__all__ = ["SequenceDataset"]
