"""Taps: each turns a protocol into an Exchange plus body chunks and hands them to the Sensor."""
