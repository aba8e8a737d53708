//! The Transformer's parameters as named views: one type, [`ParamTensors`],
//! for the model's variables, their contents and their gradients.

/// A weight and its bias: a linear layer's `w [out, in]` and `b [out]`, or
/// a LayerNorm's gain and shift (`[d]` each).
pub(crate) struct Affine<T> {
    pub w: T,
    pub b: T,
}

/// One block's parameters, named as the model's fields.
pub(crate) struct BlockTensors<T> {
    pub ln1: Affine<T>,
    pub qkv: Affine<T>,
    pub proj: Affine<T>,
    pub ln2: Affine<T>,
    pub fc: Affine<T>,
    pub fc_proj: Affine<T>,
}

/// Every parameter of the Transformer by name: the model's variables
/// (`T = &Var`), their contents (`&[f32]`), or their gradients
/// (`Vec<f32>`).
pub(crate) struct ParamTensors<T> {
    /// `[vocab, d]`: token embeddings.
    pub tok: T,
    /// `[context, d]`: position embeddings.
    pub pos: T,
    pub blocks: Vec<BlockTensors<T>>,
    pub ln_f: Affine<T>,
    pub head: Affine<T>,
}

impl<T> Affine<T> {
    fn try_map<U, E>(&self, f: &mut impl FnMut(&T) -> Result<U, E>) -> Result<Affine<U>, E> {
        Ok(Affine {
            w: f(&self.w)?,
            b: f(&self.b)?,
        })
    }
}

impl<T> ParamTensors<T> {
    /// The same names over `f` of each tensor (the first error, if any).
    pub(super) fn try_map<U, E>(
        &self,
        mut f: impl FnMut(&T) -> Result<U, E>,
    ) -> Result<ParamTensors<U>, E> {
        let f = &mut f;
        Ok(ParamTensors {
            tok: f(&self.tok)?,
            pos: f(&self.pos)?,
            blocks: self
                .blocks
                .iter()
                .map(|b| {
                    Ok(BlockTensors {
                        ln1: b.ln1.try_map(f)?,
                        qkv: b.qkv.try_map(f)?,
                        proj: b.proj.try_map(f)?,
                        ln2: b.ln2.try_map(f)?,
                        fc: b.fc.try_map(f)?,
                        fc_proj: b.fc_proj.try_map(f)?,
                    })
                })
                .collect::<Result<_, E>>()?,
            ln_f: self.ln_f.try_map(f)?,
            head: self.head.try_map(f)?,
        })
    }

    pub(super) fn map<U>(&self, mut f: impl FnMut(&T) -> U) -> ParamTensors<U> {
        match self.try_map(|x| Ok::<U, std::convert::Infallible>(f(x))) {
            Ok(v) => v,
        }
    }

    /// Every tensor, in one fixed order (the same for any `T`).
    pub(super) fn into_list(self) -> Vec<T> {
        let mut v = vec![self.tok, self.pos];
        for b in self.blocks {
            for a in [b.ln1, b.qkv, b.proj, b.ln2, b.fc, b.fc_proj] {
                v.extend([a.w, a.b]);
            }
        }
        v.extend([self.ln_f.w, self.ln_f.b, self.head.w, self.head.b]);
        v
    }
}
