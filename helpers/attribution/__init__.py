"""Token attributions: Integrated Gradients and agreement with the teacher."""
