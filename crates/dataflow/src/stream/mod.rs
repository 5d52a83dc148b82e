//! The stream processor (Carbone et al. 2015; Akidau et al. 2015).
