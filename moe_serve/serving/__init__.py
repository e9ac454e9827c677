"""Serving simulator: requests, workloads, scheduler, engine, virtual clock, sampling."""
