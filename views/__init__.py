"""Recommender-facing views built with Faust: latest attributes per listing and listings per category."""
