"""Stage vision: image prompts through the whole model (vision tower included), compared with the reference's."""
