"""From clusters to answers: semantic classes, masks, evaluation against masks, exports."""
