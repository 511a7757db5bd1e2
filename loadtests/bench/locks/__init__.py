"""The `locks` phase of `flashsale bench`: every lock design of the articles, under real faults."""
