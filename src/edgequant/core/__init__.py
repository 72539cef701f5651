"""Shared by every layer (numpy and the standard library only): atomic file outputs, text safety, lazy
package attributes."""
