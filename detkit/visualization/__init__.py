"""Drawing detections and plotting curves."""
