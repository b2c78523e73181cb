"""The two models: M, the classifier UnMask protects, and K, the part extractor."""
