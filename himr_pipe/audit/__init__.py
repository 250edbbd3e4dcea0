"""Privacy audit: attacks on encrypted images and the scores of what they recover."""
