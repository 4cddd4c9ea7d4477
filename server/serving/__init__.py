"""The serving layer: turns a validated request into engine calls and shapes OpenAI's responses."""
