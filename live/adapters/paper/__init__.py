"""The paper broker: fills at the next quote, as DESIGN section 3 says."""
