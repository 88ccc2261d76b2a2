"""Evaluation: VOC AP by the devkit's rules, COCO metrics through pycocotools, detection files."""
