"""Evaluation: intelligibility (WER), speaker similarity, consistency, speed."""
