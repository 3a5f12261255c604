"""Where prompts come from: prompt pairs and templates, the demo data, model loading."""
