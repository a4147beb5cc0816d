//! SQL classifier.
